package authz

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// ErrInvalidPolicy wraps every reason Compile refuses an Authorization.
var ErrInvalidPolicy = errors.New("invalid authorization policy")

// Policy is a compiled Authorization. It is immutable.
type Policy struct {
	// Key is "<namespace>/<name>", the policy's xDS resource name and the name workloads list
	// it by.
	Key       string
	Name      string
	Namespace string
	Scope     apiwire.Scope
	Action    apiwire.Action
	DryRun    bool
	rules     []rule
}

type rule struct{ clauses []clause }

type clause struct{ alts []match }

// Compile checks and compiles a. It fails (wrapping ErrInvalidPolicy) on a name or namespace
// that is empty, an unknown scope or action, and an address that is not 4 or 16 bytes or whose
// prefix length exceeds its size.
func Compile(a *apiwire.Authorization) (*Policy, error) {
	if a.Name == "" || a.Namespace == "" {
		return nil, fmt.Errorf("%w: name %q, namespace %q: both must be set", ErrInvalidPolicy, a.Name, a.Namespace)
	}
	key := a.Namespace + "/" + a.Name
	if !a.Scope.Known() {
		return nil, fmt.Errorf("%w: %s: unknown scope %d", ErrInvalidPolicy, key, a.Scope)
	}
	if !a.Action.Known() {
		return nil, fmt.Errorf("%w: %s: unknown action %d", ErrInvalidPolicy, key, a.Action)
	}
	p := &Policy{Key: key, Name: a.Name, Namespace: a.Namespace, Scope: a.Scope, Action: a.Action, DryRun: a.DryRun}
	for i := range a.Rules {
		var cr rule
		for j := range a.Rules[i].Clauses {
			var cc clause
			for k := range a.Rules[i].Clauses[j].Matches {
				cm, err := compileMatch(&a.Rules[i].Clauses[j].Matches[k])
				if err != nil {
					return nil, fmt.Errorf("%w: %s: rules[%d].clauses[%d].matches[%d]: %w", ErrInvalidPolicy, key, i, j, k, err)
				}
				cc.alts = append(cc.alts, cm)
			}
			cr.clauses = append(cr.clauses, cc)
		}
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

func compileMatch(m *apiwire.Match) (match, error) {
	var out match
	var err error
	out.namespaces = stringMatches(m.Namespaces)
	out.notNamespaces = stringMatches(m.NotNamespaces)
	out.principals = stringMatches(m.Principals)
	out.notPrincipals = stringMatches(m.NotPrincipals)
	out.sas = serviceAccounts(m.ServiceAccounts)
	out.notSAs = serviceAccounts(m.NotServiceAccounts)
	if out.srcIPs, err = prefixes("source_ips", m.SourceIPs); err != nil {
		return out, err
	}
	if out.notSrcIPs, err = prefixes("not_source_ips", m.NotSourceIPs); err != nil {
		return out, err
	}
	if out.dstIPs, err = prefixes("destination_ips", m.DestinationIPs); err != nil {
		return out, err
	}
	if out.notDstIPs, err = prefixes("not_destination_ips", m.NotDestinationIPs); err != nil {
		return out, err
	}
	out.ports = m.DestinationPorts
	out.notPorts = m.NotDestinationPorts
	return out, nil
}

func stringMatches(in []apiwire.StringMatch) looseStrings {
	if len(in) == 0 {
		return nil
	}
	out := make(looseStrings, 0, len(in))
	for _, s := range in {
		switch s.Kind {
		case apiwire.MatchExact:
			out = append(out, stringMatch{kind: exact, value: s.Value})
		case apiwire.MatchPrefix:
			out = append(out, stringMatch{kind: prefix, value: s.Value})
		case apiwire.MatchSuffix:
			out = append(out, stringMatch{kind: suffix, value: s.Value})
		case apiwire.MatchPresence:
			out = append(out, stringMatch{kind: presence})
		default:
			// A StringMatch without a kind matches no value: an exact match on a value no
			// identity has would widen nothing, so it is kept as one that never matches.
			out = append(out, stringMatch{kind: exact, value: "\x00never"})
		}
	}
	return out
}

func serviceAccounts(in []apiwire.ServiceAccountMatch) []serviceAccount {
	if len(in) == 0 {
		return nil
	}
	out := make([]serviceAccount, 0, len(in))
	for _, s := range in {
		out = append(out, serviceAccount{namespace: s.Namespace, name: s.ServiceAccount})
	}
	return out
}

// prefixes converts addresses to prefixes, masked, IPv4-mapped ones as IPv4.
func prefixes(field string, in []apiwire.CIDR) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(in))
	for i, a := range in {
		addr, ok := netip.AddrFromSlice(a.Address)
		if !ok {
			return nil, fmt.Errorf("%s[%d]: address of %d bytes, want 4 or 16", field, i, len(a.Address))
		}
		bits := int(a.Length)
		if bits > addr.BitLen() {
			return nil, fmt.Errorf("%s[%d]: prefix length %d exceeds %d", field, i, bits, addr.BitLen())
		}
		if addr.Is4In6() && bits >= 96 {
			addr, bits = addr.Unmap(), bits-96
		}
		p, err := addr.Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// matches reports whether any rule of p matches c.
func (p *Policy) matches(c *Conn) bool {
	for i := range p.rules {
		if p.rules[i].matches(c) {
			return true
		}
	}
	return false
}

func (r *rule) matches(c *Conn) bool {
	for i := range r.clauses {
		if !r.clauses[i].matches(c) {
			return false
		}
	}
	return true
}

func (cl *clause) matches(c *Conn) bool {
	if len(cl.alts) == 0 {
		return true
	}
	for i := range cl.alts {
		if cl.alts[i].matches(c) {
			return true
		}
	}
	return false
}

// Matches reports whether the policy matches c, whatever its action.
func (p *Policy) Matches(c *Conn) bool { return p.matches(c) }
