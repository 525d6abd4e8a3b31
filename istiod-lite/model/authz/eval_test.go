package authz

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"istio.io/api/security/v1beta1"

	"github.com/ambit-mesh/ambit/api/security"
)

// This file holds two independent evaluators used by the property and fuzz tests:
// ztunnelMatches decides a connection against converted output the way ztunnel's rbac.rs does,
// and policyRule decides it against an input AuthorizationPolicy rule from the API's documented
// L4 meaning, reading what ztunnel cannot know as "could match" (fail closed, for DENY).

// conn is what ztunnel knows about an inbound connection.
type conn struct {
	src, dst netip.Addr
	port     uint16
	peer     *peer // nil: plaintext, no identity
}

func (c conn) String() string {
	id := "no identity"
	if c.peer != nil {
		id = c.peer.principal()
	}
	return fmt.Sprintf("%v (%s) -> %v port %d", c.src, id, c.dst, c.port)
}

type peer struct{ td, ns, sa string }

func (p *peer) principal() string { return p.td + "/ns/" + p.ns + "/sa/" + p.sa }

// ztunnelMatches follows rbac.rs: a policy without rules never matches; a rule matches when all
// its clauses do, so a rule without clauses matches everything; a clause matches when any of its
// matches does, or when it has none; a Match with no field set is skipped, so it never matches.
// The conversion never sends the last two (checkConversion checks it).
func ztunnelMatches(a *security.Authorization, c conn) bool {
	for _, r := range a.GetRules() {
		if ztunnelRule(r, c) {
			return true
		}
	}
	return false // no rules: never matches
}

func ztunnelRule(r *security.Rule, c conn) bool {
	for _, cl := range r.GetClauses() {
		if len(cl.GetMatches()) == 0 {
			continue // an empty clause matches
		}
		ok := false
		for _, m := range cl.GetMatches() {
			if !matchIsEmptyForTest(m) && ztunnelMatch(m, c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func matchIsEmptyForTest(m *security.Match) bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+
		len(m.Principals)+len(m.NotPrincipals)+len(m.SourceIps)+len(m.NotSourceIps)+
		len(m.DestinationIps)+len(m.NotDestinationIps)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

func ztunnelMatch(m *security.Match, c conn) bool {
	ns, id := "", ""
	if c.peer != nil {
		ns, id = c.peer.ns, "spiffe://"+c.peer.principal()
	}
	principal := func(s *security.StringMatch) bool {
		rest, ok := strings.CutPrefix(id, "spiffe://")
		return ok && ztunnelString(s, rest)
	}
	namespace := func(s *security.StringMatch) bool { return ztunnelString(s, ns) }
	sa := func(s *security.ServiceAccountMatch) bool {
		return c.peer != nil && s.GetNamespace() == c.peer.ns && s.GetServiceAccount() == c.peer.sa
	}
	srcIP := func(a *security.Address) bool { return ztunnelContains(a, c.src) }
	dstIP := func(a *security.Address) bool { return ztunnelContains(a, c.dst) }
	port := func(p uint32) bool { return uint16(p) == c.port }
	return both(m.DestinationIps, m.NotDestinationIps, dstIP) &&
		both(m.SourceIps, m.NotSourceIps, srcIP) &&
		both(m.DestinationPorts, m.NotDestinationPorts, port) &&
		both(m.ServiceAccounts, m.NotServiceAccounts, sa) &&
		both(m.Principals, m.NotPrincipals, principal) &&
		both(m.Namespaces, m.NotNamespaces, namespace)
}

// both: any positive value matches (or none is given) and no negative value matches.
func both[T any](pos, neg []T, f func(T) bool) bool {
	if len(pos) > 0 && !anyOf(pos, f) {
		return false
	}
	return !anyOf(neg, f)
}

func anyOf[T any](xs []T, f func(T) bool) bool {
	for _, x := range xs {
		if f(x) {
			return true
		}
	}
	return false
}

func ztunnelString(s *security.StringMatch, v string) bool {
	switch t := s.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		return v == t.Exact
	case *security.StringMatch_Prefix:
		return strings.HasPrefix(v, t.Prefix)
	case *security.StringMatch_Suffix:
		return strings.HasSuffix(v, t.Suffix)
	case *security.StringMatch_Presence:
		return v != ""
	}
	return false
}

func ztunnelContains(a *security.Address, ip netip.Addr) bool {
	addr, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok {
		return false
	}
	p, err := addr.Prefix(int(a.GetLength()))
	return err == nil && p.Contains(ip)
}

// policyMatches reports whether any of the given rules of a policy in namespace ns matches c.
// See policyRule.
func policyMatches(rules []*v1beta1.Rule, ns string, c conn) bool {
	for _, r := range rules {
		if policyRule(r, ns, c) {
			return true
		}
	}
	return false
}

// policyRule reports whether rule r of a policy in namespace ns might match c, reading the rule as
// the AuthorizationPolicy reference describes it: an unset field means any value, so an empty (or
// null) rule, source or operation matches everything. What ztunnel cannot know about c is read
// as matching: HTTP fields, `when` keys other than the five L4 ones, and conditions without a key
// or values (which the API requires). Malformed addresses and ports are read as absent. For a rule
// where ruleIsL4 holds none of this arises, and the result is the rule's exact meaning.
func policyRule(r *v1beta1.Rule, ns string, c conn) bool {
	if len(r.GetTo()) > 0 && !anyOf(r.GetTo(), func(t *v1beta1.Rule_To) bool { return policyOperation(t.GetOperation(), c) }) {
		return false
	}
	if len(r.GetFrom()) > 0 && !anyOf(r.GetFrom(), func(f *v1beta1.Rule_From) bool { return policySource(f.GetSource(), ns, c) }) {
		return false
	}
	for _, w := range r.GetWhen() {
		if !policyCondition(w, c) {
			return false
		}
	}
	return true
}

func policyOperation(op *v1beta1.Operation, c conn) bool {
	isPort := func(s string) bool {
		return trimZeros(s) == strconv.Itoa(int(c.port))
	}
	return values(wellFormed(op.GetPorts(), validPort), wellFormed(op.GetNotPorts(), validPort), isPort)
}

func policySource(s *v1beta1.Source, ns string, c conn) bool {
	principal := func(p string) bool { return c.peer != nil && pattern(p, c.peer.principal()) }
	peerNS := ""
	if c.peer != nil {
		peerNS = c.peer.ns
	}
	namespace := func(p string) bool { return pattern(p, peerNS) }
	sa := func(v string) bool {
		want := v
		if !strings.Contains(v, "/") {
			want = ns + "/" + v
		}
		return c.peer != nil && want == c.peer.ns+"/"+c.peer.sa
	}
	return values(s.GetPrincipals(), s.GetNotPrincipals(), principal) &&
		values(s.GetNamespaces(), s.GetNotNamespaces(), namespace) &&
		values(s.GetServiceAccounts(), s.GetNotServiceAccounts(), sa) &&
		values(wellFormed(s.GetIpBlocks(), validBlock), wellFormed(s.GetNotIpBlocks(), validBlock), inBlock(c.src))
}

func policyCondition(w *v1beta1.Condition, c conn) bool {
	vals, notVals := w.GetValues(), w.GetNotValues()
	var f func(string) bool
	switch w.GetKey() {
	case "source.ip":
		f = inBlock(c.src)
		vals, notVals = wellFormed(vals, validBlock), wellFormed(notVals, validBlock)
	case "destination.ip":
		f = inBlock(c.dst)
		vals, notVals = wellFormed(vals, validBlock), wellFormed(notVals, validBlock)
	case "destination.port":
		f = func(s string) bool { return trimZeros(s) == strconv.Itoa(int(c.port)) }
		vals, notVals = wellFormed(vals, validPort), wellFormed(notVals, validPort)
	case "source.namespace":
		f = func(p string) bool { return c.peer != nil && pattern(p, c.peer.ns) || c.peer == nil && pattern(p, "") }
	case "source.principal":
		f = func(p string) bool { return c.peer != nil && pattern(p, c.peer.principal()) }
	default:
		return true // not an L4 key: ztunnel cannot tell, so it might match
	}
	return values(vals, notVals, f)
}

// wellFormed keeps the values ok accepts.
func wellFormed(xs []string, ok func(string) bool) []string {
	var out []string
	for _, x := range xs {
		if ok(x) {
			out = append(out, x)
		}
	}
	return out
}

func values(pos, neg []string, f func(string) bool) bool {
	return (len(pos) == 0 || anyOf(pos, f)) && !anyOf(neg, f)
}

// pattern is the API's string matching: "*" any non-empty value, "*x" suffix, "x*" prefix.
func pattern(p, v string) bool {
	switch {
	case p == "*":
		return v != ""
	case strings.HasPrefix(p, "*"):
		return strings.HasSuffix(v, p[1:])
	case strings.HasSuffix(p, "*"):
		return strings.HasPrefix(v, p[:len(p)-1])
	}
	return p == v
}

func inBlock(ip netip.Addr) func(string) bool {
	return func(b string) bool {
		if p, err := netip.ParsePrefix(b); err == nil {
			return p.Masked().Contains(ip)
		}
		a, err := netip.ParseAddr(b)
		return err == nil && a == ip
	}
}

func trimZeros(s string) string {
	t := strings.TrimLeft(s, "0")
	if t == "" && s != "" {
		return "0"
	}
	return t
}

// ruleIsL4 reports whether ztunnel can enforce all of r as written in a policy with the given
// action: no L7 attribute, every condition with an L4 key and a value, and every address and port
// well formed. The API reads an empty or null source or operation as "any": a DENY enforces that
// as written, an ALLOW drops the rule (it never allows more than what its fields name).
func ruleIsL4(r *v1beta1.Rule, action v1beta1.AuthorizationPolicy_Action) bool {
	if r == nil {
		return false
	}
	emptyOK := action == v1beta1.AuthorizationPolicy_DENY
	for _, t := range r.To {
		op := t.GetOperation()
		if len(op.GetHosts())+len(op.GetNotHosts())+len(op.GetMethods())+len(op.GetNotMethods())+len(op.GetPaths())+len(op.GetNotPaths()) > 0 ||
			!all(op.GetPorts(), validPort) || !all(op.GetNotPorts(), validPort) ||
			!emptyOK && len(op.GetPorts())+len(op.GetNotPorts()) == 0 {
			return false
		}
	}
	for _, f := range r.From {
		s := f.GetSource()
		if len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals())+len(s.GetRemoteIpBlocks())+len(s.GetNotRemoteIpBlocks())+
			len(s.GetTrustDomains())+len(s.GetNotTrustDomains()) > 0 {
			return false
		}
		if !emptyOK && len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetNamespaces())+len(s.GetNotNamespaces())+
			len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts())+len(s.GetIpBlocks())+len(s.GetNotIpBlocks()) == 0 {
			return false
		}
		if !all(s.GetIpBlocks(), validBlock) || !all(s.GetNotIpBlocks(), validBlock) {
			return false
		}
	}
	for _, w := range r.When {
		if w == nil || len(w.Values)+len(w.NotValues) == 0 {
			return false
		}
		switch w.Key {
		case "source.namespace", "source.principal":
		case "source.ip", "destination.ip":
			if !all(w.Values, validBlock) || !all(w.NotValues, validBlock) {
				return false
			}
		case "destination.port":
			if !all(w.Values, validPort) || !all(w.NotValues, validPort) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func all(xs []string, f func(string) bool) bool {
	for _, x := range xs {
		if !f(x) {
			return false
		}
	}
	return true
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535 && !strings.ContainsAny(s, "+-")
}

func validBlock(s string) bool {
	if _, err := netip.ParsePrefix(s); err == nil {
		return true
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Zone() == ""
}
