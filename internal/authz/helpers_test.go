package authz

import (
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

func exactM(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}
func prefixM(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: s}}
}
func suffixM(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: s}}
}
func presenceM() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

// policy builds an Authorization with one rule of one clause per given match list.
func policy(ns, name string, scope security.Scope, action security.Action, clauses ...[]*security.Match) *security.Authorization {
	r := &security.Rule{}
	for _, ms := range clauses {
		r.Clauses = append(r.Clauses, &security.Clause{Matches: ms})
	}
	return &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action, Rules: []*security.Rule{r}}
}

func mustCompile(t testing.TB, a *security.Authorization) *Policy {
	t.Helper()
	p, err := compilePB(t, a)
	if err != nil {
		t.Fatalf("Compile(%v): %v", a, err)
	}
	return p
}

// compilePB compiles a generated Authorization as ztunnel receives it: encoded, then decoded
// by apiwire.
func compilePB(t testing.TB, a *security.Authorization) (*Policy, error) {
	t.Helper()
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatalf("marshal %v: %v", a, err)
	}
	d, err := apiwire.DecodeAuthorization(b)
	if err != nil {
		t.Fatalf("decode %v: %v", a, err)
	}
	return Compile(d)
}

func conn(id, src, dst string, port uint16) *Conn {
	c := &Conn{Source: netip.MustParseAddr(src), Destination: netip.MustParseAddr(dst), Port: port}
	c.SetIdentity(id)
	return c
}

// refMatches is an independent, direct reading of the proto, for the fuzz test: every rule,
// clause and match evaluated as DESIGN.md section 8 and the package doc say.
func refMatches(a *security.Authorization, c *Conn) bool {
	for _, r := range a.GetRules() {
		ok := true
		for _, cl := range r.GetClauses() {
			if len(cl.GetMatches()) == 0 {
				continue
			}
			any := false
			for _, m := range cl.GetMatches() {
				if refMatch(m, c) {
					any = true
				}
			}
			if !any {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func refMatch(m *security.Match, c *Conn) bool {
	n := len(m.Namespaces) + len(m.NotNamespaces) + len(m.ServiceAccounts) + len(m.NotServiceAccounts) +
		len(m.Principals) + len(m.NotPrincipals) + len(m.SourceIps) + len(m.NotSourceIps) +
		len(m.DestinationIps) + len(m.NotDestinationIps) + len(m.DestinationPorts) + len(m.NotDestinationPorts)
	if n == 0 {
		return false
	}
	str := func(s *security.StringMatch, v string) bool {
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
	principal := func(s *security.StringMatch) bool { return c.Principal != "" && str(s, c.Principal) }
	namespace := func(s *security.StringMatch) bool { return str(s, c.Namespace) }
	sa := func(s *security.ServiceAccountMatch) bool {
		return c.Namespace != "" && s.Namespace == c.Namespace && s.ServiceAccount == c.ServiceAccount
	}
	in := func(ip netip.Addr) func(*security.Address) bool {
		return func(a *security.Address) bool {
			addr, _ := netip.AddrFromSlice(a.Address)
			bits := int(a.Length)
			if addr.Is4In6() && bits >= 96 {
				addr, bits = addr.Unmap(), bits-96
			}
			p, err := addr.Prefix(bits)
			return err == nil && p.Contains(ip)
		}
	}
	port := func(p uint32) bool { return p == uint32(c.Port) }
	return both(m.DestinationIps, m.NotDestinationIps, in(c.Destination)) &&
		both(m.SourceIps, m.NotSourceIps, in(c.Source)) &&
		both(m.DestinationPorts, m.NotDestinationPorts, port) &&
		both(m.ServiceAccounts, m.NotServiceAccounts, sa) &&
		both(m.Principals, m.NotPrincipals, principal) &&
		both(m.Namespaces, m.NotNamespaces, namespace)
}

func both[T any](pos, neg []T, f func(T) bool) bool {
	has := func(xs []T) bool {
		for _, x := range xs {
			if f(x) {
				return true
			}
		}
		return false
	}
	return (len(pos) == 0 || has(pos)) && !has(neg)
}

func netipFrom(b []byte) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(b)
	return a.Unmap(), ok
}
