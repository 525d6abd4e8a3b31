package authz

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

// FuzzConvertAuthorizationPolicy converts policies read from the fuzz input, either as a
// Kubernetes JSON object (input starting with '{') or built field by field from the bytes, and
// checks the conversion's promises against two independent evaluators (eval_test.go): rules
// ztunnel can enforce keep their meaning exactly, an ALLOW policy never allows a connection its
// L4 rules do not, a DENY rule denies every connection its input might match (fail closed) and
// no other, nothing ztunnel cannot enforce as written passes without a message, and no panic.
func FuzzConvertAuthorizationPolicy(f *testing.F) {
	for _, s := range []string{
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"rules":[{}]}}`,
		`{"metadata":{"name":"p","namespace":"istio-system"},"spec":{"action":"DENY","rules":[{"to":[{"operation":{"ports":["80"]}}]}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"selector":{"matchLabels":{"app":"a"}},"rules":[{"from":[{"source":` +
			`{"principals":["cluster.local/ns/foo/sa/bar","*/sa/default"],"notNamespaces":["bar"],"ipBlocks":["10.0.0.0/8"]}}],` +
			`"to":[{"operation":{"ports":["80","8080"],"notPorts":["9090"]}}],"when":[{"key":"destination.ip","values":["10.0.0.1"]}]}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"principals":["a"],` +
			`"requestPrincipals":["x"]}}],"to":[{"operation":{"methods":["GET"]}},{"operation":{"ports":["80"]}}]},` +
			`{"when":[{"key":"request.headers[x]","values":["y"]},{"key":"source.namespace","notValues":["foo"]}]}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"rules":[{"from":[{"source":{"serviceAccounts":["foo/bar","default"],` +
			`"notIpBlocks":["bad","::1"]}}]},{"to":[{"operation":{"ports":["70000"]}}]},{"from":[{}]}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"action":"DENY","rules":[null,{"to":[{"operation":{"methods":["DELETE"]}}]},` +
			`{"from":[{},{"source":{}}],"to":[{"operation":{}}],"when":[{},null,{"key":"source.ip"}]},` +
			`{"from":[{"source":{"ipBlocks":["10.0.0.300"]}}],"when":[{"key":"destination.port","values":["http"]}]}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"action":"CUSTOM","provider":{"name":"ext"},"rules":[{}]}}`,
		`{"metadata":{"name":"p","namespace":"foo"},"spec":{"targetRefs":[{"kind":"Service","name":"s"}],"rules":[{}]}}`,
	} {
		f.Add([]byte(s))
	}
	for _, b := range [][]byte{
		nil,
		{0, 1, 1, 0, 1, 0xff, 0xff, 3, 1, 2, 3, 4, 5, 6, 7, 8},
		{1, 0, 2, 2, 1, 0x0f, 0xf0, 2, 9, 8, 7, 6, 2, 3, 5, 1, 4},
		{0, 1, 0, 3, 2, 0x33, 0x55, 1, 0xaa, 0x0c, 4, 4, 4, 0, 2, 6, 1, 3},
		{1, 1, 1, 1, 3, 0xff, 0x00, 2, 1, 2, 0xff, 0xff, 2, 2, 2, 2, 2, 2},
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := fuzzPolicy(data)
		if p == nil {
			return
		}
		checkConversion(t, p)
	})
}

// TestGeneratedPolicies runs the fuzz checks over a deterministic spread of generated policies,
// so plain `go test` covers more than the seed corpus.
func TestGeneratedPolicies(t *testing.T) {
	for i := range 3000 {
		seed := make([]byte, 64)
		x := uint32(i)*2654435761 + 1
		for j := range seed {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			seed[j] = byte(x)
		}
		checkConversion(t, (&fuzzGen{b: seed}).policy())
	}
}

func fuzzPolicy(data []byte) *securityv1.AuthorizationPolicy {
	if len(data) > 0 && data[0] == '{' {
		var p securityv1.AuthorizationPolicy
		if json.Unmarshal(data, &p) != nil {
			return nil
		}
		return &p
	}
	return (&fuzzGen{b: data}).policy()
}

var (
	fuzzPrincipals = []string{"cluster.local/ns/foo/sa/bar", "cluster.local/ns/foo/*", "*/sa/bar", "*", "td.example/*",
		"*/sa/default", "spiffe://cluster.local/ns/foo/sa/bar", ""}
	fuzzNamespaces = []string{"foo", "fo*", "*oo", "*", "default", "bar", ""}
	fuzzAccounts   = []string{"foo/bar", "bar", "default", "default/default", "a/b/c", "foo/x"}
	fuzzIPs        = []string{"10.0.0.1", "10.0.0.0/8", "10.1.2.3/16", "192.168.1.0/24", "2001:db8::/32", "::1", "0.0.0.0/0",
		"1.2.3.4", "bad", "10.0.0.0/33", "", "fe80::1%eth0"}
	fuzzPorts = []string{"80", "443", "8080", "0", "65535", "9090", "0080", "70000", "http", ""}
	fuzzHTTP  = []string{"GET", "/a", "example.com", "*"}
	fuzzKeys  = []string{"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port",
		"request.headers[x]", "connection.sni", "remote.ip"}
	fuzzActions = []v1beta1.AuthorizationPolicy_Action{v1beta1.AuthorizationPolicy_ALLOW, v1beta1.AuthorizationPolicy_DENY,
		v1beta1.AuthorizationPolicy_ALLOW, v1beta1.AuthorizationPolicy_DENY, v1beta1.AuthorizationPolicy_AUDIT,
		v1beta1.AuthorizationPolicy_CUSTOM, 9}
)

// fuzzGen builds a policy from bytes; when the bytes run out every choice is 0.
type fuzzGen struct{ b []byte }

func (g *fuzzGen) next() byte {
	if len(g.b) == 0 {
		return 0
	}
	c := g.b[0]
	g.b = g.b[1:]
	return c
}

func (g *fuzzGen) upTo(n int) int { return int(g.next()) % (n + 1) }

func (g *fuzzGen) pick(pool []string) string { return pool[int(g.next())%len(pool)] }

func (g *fuzzGen) list(pool []string) []string {
	var out []string
	for range g.upTo(2) {
		out = append(out, g.pick(pool))
	}
	return out
}

// listIf fills a field when bit i of mask is set, so most fields stay empty.
func (g *fuzzGen) listIf(mask uint16, i uint, pool []string) []string {
	if mask&(1<<i) == 0 {
		return nil
	}
	l := g.list(pool)
	if len(l) == 0 {
		l = []string{g.pick(pool)}
	}
	return l
}

func (g *fuzzGen) policy() *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: []string{"foo", root}[g.upTo(1)]}}
	p.Spec.Action = fuzzActions[int(g.next())%len(fuzzActions)]
	switch g.upTo(7) {
	case 1:
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}
	case 2:
		p.Spec.TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "s"}}
	case 3:
		p.Annotations = map[string]string{"istio.io/dry-run": []string{"true", "false", "x"}[g.upTo(2)]}
	}
	n := g.upTo(3)
	if n > 0 {
		p.Spec.Rules = []*v1beta1.Rule{} // keep "rules: []" distinct from no rules
	}
	for range n {
		p.Spec.Rules = append(p.Spec.Rules, g.rule())
	}
	return p
}

func (g *fuzzGen) rule() *v1beta1.Rule {
	if g.upTo(15) == 15 {
		return nil
	}
	r := &v1beta1.Rule{}
	for range g.upTo(2) {
		r.To = append(r.To, &v1beta1.Rule_To{Operation: g.operation()})
	}
	for range g.upTo(2) {
		r.From = append(r.From, &v1beta1.Rule_From{Source: g.source()})
	}
	for range g.upTo(2) {
		r.When = append(r.When, g.condition())
	}
	return r
}

func (g *fuzzGen) mask() uint16 { return uint16(g.next()) | uint16(g.next())<<8 }

func (g *fuzzGen) operation() *v1beta1.Operation {
	m := g.mask()
	if m == 0 {
		return nil
	}
	return &v1beta1.Operation{
		Ports: g.listIf(m, 0, fuzzPorts), NotPorts: g.listIf(m, 1, fuzzPorts),
		// L7 fields are rarer: they need two bits.
		Methods: g.listIf(m&(m>>8), 2, fuzzHTTP), NotMethods: g.listIf(m&(m>>8), 3, fuzzHTTP),
		Paths: g.listIf(m&(m>>8), 4, fuzzHTTP), NotPaths: g.listIf(m&(m>>8), 5, fuzzHTTP),
		Hosts: g.listIf(m&(m>>8), 6, fuzzHTTP), NotHosts: g.listIf(m&(m>>8), 7, fuzzHTTP),
	}
}

func (g *fuzzGen) source() *v1beta1.Source {
	m := g.mask()
	if m == 0 {
		return nil
	}
	rare := m & (m >> 4) & (m >> 8)
	return &v1beta1.Source{
		Principals: g.listIf(m, 0, fuzzPrincipals), NotPrincipals: g.listIf(m, 1, fuzzPrincipals),
		Namespaces: g.listIf(m, 2, fuzzNamespaces), NotNamespaces: g.listIf(m, 3, fuzzNamespaces),
		ServiceAccounts: g.listIf(m, 4, fuzzAccounts), NotServiceAccounts: g.listIf(m, 5, fuzzAccounts),
		IpBlocks: g.listIf(m, 6, fuzzIPs), NotIpBlocks: g.listIf(m, 7, fuzzIPs),
		RequestPrincipals: g.listIf(rare, 0, fuzzPrincipals), NotRequestPrincipals: g.listIf(rare, 1, fuzzPrincipals),
		RemoteIpBlocks: g.listIf(rare, 2, fuzzIPs), NotRemoteIpBlocks: g.listIf(rare, 3, fuzzIPs),
		TrustDomains: g.listIf(rare, 4, fuzzNamespaces), NotTrustDomains: g.listIf(rare, 5, fuzzNamespaces),
	}
}

func (g *fuzzGen) condition() *v1beta1.Condition {
	if g.upTo(15) == 15 {
		return nil
	}
	key := g.pick(fuzzKeys)
	pool := map[string][]string{
		"source.ip": fuzzIPs, "destination.ip": fuzzIPs, "destination.port": fuzzPorts,
		"source.namespace": fuzzNamespaces, "source.principal": fuzzPrincipals,
	}[key]
	if pool == nil || g.upTo(7) == 0 {
		pool = fuzzHTTP
	}
	return &v1beta1.Condition{Key: key, Values: g.list(pool), NotValues: g.list(pool)}
}

var (
	fuzzSources = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("192.168.1.7"), netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("::1"),
		netip.MustParseAddr("1.2.3.4")}
	fuzzDests     = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("2001:db8::1")}
	fuzzConnPorts = []uint16{0, 80, 443, 8080, 9090, 65535}
	fuzzPeers     = []*peer{nil, {"cluster.local", "foo", "bar"}, {"cluster.local", "default", "default"}, {"td.example", "foo", "x"}}
)

func checkConversion(t *testing.T, p *securityv1.AuthorizationPolicy) {
	t.Helper()
	before := proto.Clone(&p.Spec).(*v1beta1.AuthorizationPolicy)
	res := ConvertAuthorizationPolicy(p, root)
	spec := &p.Spec
	if !proto.Equal(spec, before) {
		t.Fatalf("the input policy was modified")
	}
	action := spec.GetAction()
	sent := (action == v1beta1.AuthorizationPolicy_ALLOW || action == v1beta1.AuthorizationPolicy_DENY) &&
		spec.GetTargetRef() == nil && len(spec.GetTargetRefs()) == 0
	a := res.Authorization
	if (a != nil) != sent {
		t.Fatalf("Authorization sent: got %t, want %t for %s", a != nil, sent, text(spec))
	}
	if !sent {
		if len(res.Dropped) == 0 {
			t.Errorf("policy not sent without a message: %s", text(spec))
		}
		return
	}
	if a.Name != p.Name || a.Namespace != p.Namespace || int32(a.Action) != int32(action) {
		t.Errorf("identity or action: got %s/%s %v, want %s/%s %v", a.Namespace, a.Name, a.Action, p.Namespace, p.Name, action)
	}
	if (a.Scope == security.Scope_WORKLOAD_SELECTOR) != (res.Selector != nil) || (a.Scope == security.Scope_WORKLOAD_SELECTOR) != (spec.Selector != nil) {
		t.Errorf("scope %v with selector %v for input selector %v", a.Scope, res.Selector, spec.Selector)
	}
	if len(a.Rules) > len(spec.Rules) {
		t.Errorf("got %d rules from %d", len(a.Rules), len(spec.Rules))
	}
	for _, r := range a.Rules {
		for _, c := range r.Clauses {
			if len(c.Matches) == 0 {
				t.Errorf("a clause without matches (it would match everything): %s", text(a))
			}
			for _, m := range c.Matches {
				if matchIsEmptyForTest(m) {
					t.Errorf("an empty match (ztunnel skips it): %s", text(a))
				}
				for _, ad := range append(append(append(m.SourceIps, m.NotSourceIps...), m.DestinationIps...), m.NotDestinationIps...) {
					if n := len(ad.Address); (n != 4 && n != 16) || int(ad.Length) > 8*n {
						t.Errorf("malformed address %v/%d", ad.Address, ad.Length)
					}
				}
				for _, port := range append(m.DestinationPorts, m.NotDestinationPorts...) {
					if port > 65535 {
						t.Errorf("port %d", port)
					}
				}
			}
		}
	}

	// Every rule ztunnel cannot enforce as written gets a message naming it, and a policy enforced
	// as written gets none.
	var l4 []*v1beta1.Rule
	for i, r := range spec.Rules {
		if ruleIsL4(r, action) {
			l4 = append(l4, r)
			continue
		}
		named := func(msg string) bool {
			rest, ok := strings.CutPrefix(msg, fmt.Sprintf("rules[%d]", i))
			return ok && (strings.HasPrefix(rest, ".") || strings.HasPrefix(rest, ":"))
		}
		if !slices.ContainsFunc(res.Dropped, named) {
			t.Errorf("rules[%d] is not enforced as written, but no message names it: %q\nin  %s", i, res.Dropped, text(spec))
		}
	}
	dryRun := p.Annotations["istio.io/dry-run"]
	_, err := strconv.ParseBool(dryRun)
	if asWritten := len(l4) == len(spec.Rules) && (dryRun == "" || err == nil); asWritten && len(res.Dropped) > 0 {
		t.Errorf("a policy enforced as written, but messages %q:\nin  %s", res.Dropped, text(spec))
	}

	if action == v1beta1.AuthorizationPolicy_ALLOW {
		// ALLOW: exactly the rules ztunnel can enforce, with their meaning.
		if len(a.Rules) != len(l4) {
			t.Errorf("ALLOW: got %d rules, want the %d rules ztunnel can enforce: %s", len(a.Rules), len(l4), text(spec))
		}
		forEachConn(func(c conn) {
			in := policyMatches(l4, p.Namespace, c)
			out := ztunnelMatches(a, c)
			if in != out {
				t.Fatalf("ALLOW: for %v the L4 rules of the input match: %t, the output: %t\nin  %s\nout %s",
					c, in, out, text(spec), text(a))
			}
		})
		return
	}
	// DENY: one rule per input rule, matching every connection the input rule might match, with
	// what ztunnel cannot know read as matching, and no other. For a rule ztunnel can enforce as
	// written that is its exact meaning.
	if len(a.Rules) != len(spec.Rules) {
		t.Fatalf("DENY: got %d rules from %d: %s", len(a.Rules), len(spec.Rules), text(spec))
	}
	forEachConn(func(c conn) {
		for i, r := range spec.Rules {
			in := policyRule(r, p.Namespace, c)
			out := ztunnelRule(a.Rules[i], c)
			if in && !out {
				t.Fatalf("DENY: rules[%d] of the input might match %v but the output does not: it fails open\nin  %s\nout %s",
					i, c, text(spec), text(a))
			}
			if out && !in {
				t.Fatalf("DENY: rules[%d] of the output matches %v but the input cannot:\nin  %s\nout %s",
					i, c, text(spec), text(a))
			}
		}
	})
}

func forEachConn(f func(conn)) {
	for _, src := range fuzzSources {
		for _, dst := range fuzzDests {
			for _, port := range fuzzConnPorts {
				for _, pr := range fuzzPeers {
					f(conn{src: src, dst: dst, port: port, peer: pr})
				}
			}
		}
	}
}
