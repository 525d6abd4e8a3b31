package authz

import (
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// Set is an immutable collection of compiled policies, indexed for evaluation. The zero
// value and nil are empty sets. Build new Sets with NewSet or With; Sets are safe to share
// between goroutines.
type Set struct {
	byKey       map[string]*Policy
	global      []*Policy
	byNamespace map[string][]*Policy
}

// NewSet returns a Set of policies. A later policy with the same Key replaces an earlier one.
func NewSet(policies ...*Policy) *Set {
	s := &Set{byKey: make(map[string]*Policy, len(policies))}
	for _, p := range policies {
		s.byKey[p.Key] = p
	}
	s.index()
	return s
}

// With returns a copy of s with set added (replacing policies of the same Key) and the policies
// keyed by remove taken out. s is not changed.
func (s *Set) With(set []*Policy, remove []string) *Set {
	out := &Set{byKey: make(map[string]*Policy, s.Len()+len(set))}
	if s != nil {
		for k, p := range s.byKey {
			out.byKey[k] = p
		}
	}
	for _, k := range remove {
		delete(out.byKey, k)
	}
	for _, p := range set {
		out.byKey[p.Key] = p
	}
	out.index()
	return out
}

func (s *Set) index() {
	s.byNamespace = map[string][]*Policy{}
	for _, p := range s.byKey {
		switch p.Scope {
		case apiwire.ScopeGlobal:
			s.global = append(s.global, p)
		case apiwire.ScopeNamespace:
			s.byNamespace[p.Namespace] = append(s.byNamespace[p.Namespace], p)
		}
	}
}

// Len returns how many policies s holds.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byKey)
}

// Get returns the policy of key "<namespace>/<name>".
func (s *Set) Get(key string) (*Policy, bool) {
	if s == nil {
		return nil, false
	}
	p, ok := s.byKey[key]
	return p, ok
}

// All calls fn for every policy of s, in no particular order, until fn returns false.
func (s *Set) All(fn func(*Policy) bool) {
	if s == nil {
		return
	}
	for _, p := range s.byKey {
		if !fn(p) {
			return
		}
	}
}

// Outcome is how a decision was reached.
type Outcome uint8

const (
	// DeniedByPolicy means a DENY policy matched.
	DeniedByPolicy Outcome = iota + 1
	// AllowedNoPolicy means no ALLOW policy applies to the destination.
	AllowedNoPolicy
	// AllowedByPolicy means an ALLOW policy matched.
	AllowedByPolicy
	// DeniedNoMatch means ALLOW policies apply and none matched.
	DeniedNoMatch
)

// Decision is the result of an evaluation.
type Decision struct {
	Outcome Outcome
	// Policy is the deciding policy for DeniedByPolicy and AllowedByPolicy, else nil.
	Policy *Policy
}

// Allowed reports whether the connection may proceed.
func (d Decision) Allowed() bool { return d.Outcome == AllowedByPolicy || d.Outcome == AllowedNoPolicy }

// String says why, for logs: "denied by policy ns/name", "allowed by policy ns/name",
// "allowed: no ALLOW policies", "denied: no ALLOW policy matched".
func (d Decision) String() string {
	switch d.Outcome {
	case DeniedByPolicy:
		return "denied by policy " + d.Policy.Key
	case AllowedByPolicy:
		return "allowed by policy " + d.Policy.Key
	case AllowedNoPolicy:
		return "allowed: no ALLOW policies"
	case DeniedNoMatch:
		return "denied: no ALLOW policy matched"
	}
	return "no decision"
}

// Evaluate decides connection c to a workload in namespace whose authorization_policies are
// selected (keys "<namespace>/<name>"; unknown keys are ignored). It does not allocate.
func (s *Set) Evaluate(namespace string, selected []string, c *Conn) Decision {
	if s == nil {
		return Decision{Outcome: AllowedNoPolicy}
	}
	ns := s.byNamespace[namespace]
	// DENY first, over all candidates.
	for _, p := range s.global {
		if p.Action == apiwire.ActionDeny && !p.DryRun && p.matches(c) {
			return Decision{Outcome: DeniedByPolicy, Policy: p}
		}
	}
	for _, p := range ns {
		if p.Action == apiwire.ActionDeny && !p.DryRun && p.matches(c) {
			return Decision{Outcome: DeniedByPolicy, Policy: p}
		}
	}
	for _, k := range selected {
		if p := s.byKey[k]; p != nil && p.Scope == apiwire.ScopeWorkloadSelector &&
			p.Action == apiwire.ActionDeny && !p.DryRun && p.matches(c) {
			return Decision{Outcome: DeniedByPolicy, Policy: p}
		}
	}
	anyAllow := false
	for _, p := range s.global {
		if p.Action == apiwire.ActionAllow && !p.DryRun {
			if p.matches(c) {
				return Decision{Outcome: AllowedByPolicy, Policy: p}
			}
			anyAllow = true
		}
	}
	for _, p := range ns {
		if p.Action == apiwire.ActionAllow && !p.DryRun {
			if p.matches(c) {
				return Decision{Outcome: AllowedByPolicy, Policy: p}
			}
			anyAllow = true
		}
	}
	for _, k := range selected {
		if p := s.byKey[k]; p != nil && p.Scope == apiwire.ScopeWorkloadSelector && p.Action == apiwire.ActionAllow && !p.DryRun {
			if p.matches(c) {
				return Decision{Outcome: AllowedByPolicy, Policy: p}
			}
			anyAllow = true
		}
	}
	if !anyAllow {
		return Decision{Outcome: AllowedNoPolicy}
	}
	return Decision{Outcome: DeniedNoMatch}
}
