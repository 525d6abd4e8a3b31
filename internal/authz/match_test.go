package authz

import (
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/api/security"
)

const (
	web   = "spiffe://cluster.local/ns/shop/sa/web"
	admin = "spiffe://cluster.local/ns/ops/sa/admin"
)

// TestMatchFields covers every field of a Match and its not_ form with each kind of value.
func TestMatchFields(t *testing.T) {
	fromWeb := conn(web, "10.1.0.5", "10.2.0.7", 8080)
	fromAdmin := conn(admin, "192.168.1.1", "10.2.0.7", 9090)
	plain := conn("", "10.1.0.5", "10.2.0.7", 8080)
	v6 := conn(web, "fd00::5", "fd00:1::7", 443)
	mapped := &Conn{}
	mapped.SetAddrs(netip.MustParseAddrPort("[::ffff:10.1.0.5]:1000"), netip.MustParseAddrPort("[::ffff:10.2.0.7]:8080"))
	mapped.SetIdentity(web)

	tests := []struct {
		name  string
		match *security.Match
		conns []*Conn
		want  []bool
	}{
		{"empty match matches nothing", &security.Match{}, []*Conn{fromWeb, plain}, []bool{false, false}},

		{"namespace exact", &security.Match{Namespaces: []*security.StringMatch{exactM("shop")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"namespace prefix", &security.Match{Namespaces: []*security.StringMatch{prefixM("sh")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"namespace suffix", &security.Match{Namespaces: []*security.StringMatch{suffixM("ps")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{false, true, false}},
		{"namespace presence", &security.Match{Namespaces: []*security.StringMatch{presenceM()}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, true, false}},
		{"namespace any of", &security.Match{Namespaces: []*security.StringMatch{exactM("x"), exactM("ops")}}, []*Conn{fromWeb, fromAdmin}, []bool{false, true}},
		{"not namespace exact", &security.Match{NotNamespaces: []*security.StringMatch{exactM("shop")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{false, true, true}},
		{"not namespace presence", &security.Match{NotNamespaces: []*security.StringMatch{presenceM()}}, []*Conn{fromWeb, plain}, []bool{false, true}},

		{"principal exact", &security.Match{Principals: []*security.StringMatch{exactM("cluster.local/ns/shop/sa/web")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"principal with scheme never matches", &security.Match{Principals: []*security.StringMatch{exactM(web)}}, []*Conn{fromWeb}, []bool{false}},
		{"principal prefix", &security.Match{Principals: []*security.StringMatch{prefixM("cluster.local/ns/ops/")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{false, true, false}},
		{"principal suffix", &security.Match{Principals: []*security.StringMatch{suffixM("/sa/web")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"principal presence", &security.Match{Principals: []*security.StringMatch{presenceM()}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, true, false}},
		{"principal exact empty never matches plaintext", &security.Match{Principals: []*security.StringMatch{exactM("")}}, []*Conn{plain}, []bool{false}},
		{"not principal presence (no identity)", &security.Match{NotPrincipals: []*security.StringMatch{presenceM()}}, []*Conn{fromWeb, plain}, []bool{false, true}},
		{"not principal suffix", &security.Match{NotPrincipals: []*security.StringMatch{suffixM("/sa/web")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{false, true, true}},

		{"service account", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "web"}}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"service account other namespace", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "ops", ServiceAccount: "web"}}}, []*Conn{fromWeb}, []bool{false}},
		{"not service account", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "shop", ServiceAccount: "web"}}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{false, true, true}},

		{"source ip single", &security.Match{SourceIps: []*security.Address{cidr("10.1.0.5/32")}}, []*Conn{fromWeb, fromAdmin, mapped}, []bool{true, false, true}},
		{"source ip cidr", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}}, []*Conn{fromWeb, fromAdmin}, []bool{true, false}},
		{"source ip host bits kept as written", &security.Match{SourceIps: []*security.Address{{Address: []byte{10, 1, 9, 9}, Length: 16}}}, []*Conn{fromWeb, fromAdmin}, []bool{true, false}},
		{"source ip /0", &security.Match{SourceIps: []*security.Address{cidr("0.0.0.0/0")}}, []*Conn{fromWeb, v6}, []bool{true, false}},
		{"source ip v6", &security.Match{SourceIps: []*security.Address{cidr("fd00::/64")}}, []*Conn{fromWeb, v6}, []bool{false, true}},
		{"source ip v4-mapped in policy", &security.Match{SourceIps: []*security.Address{{Address: netip.MustParseAddr("::ffff:10.1.0.0").AsSlice(), Length: 112}}}, []*Conn{fromWeb, fromAdmin}, []bool{true, false}},
		{"not source ip", &security.Match{NotSourceIps: []*security.Address{cidr("192.168.0.0/16")}}, []*Conn{fromWeb, fromAdmin}, []bool{true, false}},

		{"destination ip", &security.Match{DestinationIps: []*security.Address{cidr("10.2.0.7/32")}}, []*Conn{fromWeb, v6, mapped}, []bool{true, false, true}},
		{"not destination ip", &security.Match{NotDestinationIps: []*security.Address{cidr("10.2.0.0/24")}}, []*Conn{fromWeb, v6}, []bool{false, true}},

		{"destination port", &security.Match{DestinationPorts: []uint32{8080}}, []*Conn{fromWeb, fromAdmin}, []bool{true, false}},
		{"destination port any of", &security.Match{DestinationPorts: []uint32{1, 9090}}, []*Conn{fromWeb, fromAdmin}, []bool{false, true}},
		{"destination port out of range never matches", &security.Match{DestinationPorts: []uint32{65536 + 8080}}, []*Conn{fromWeb}, []bool{false}},
		{"not destination port", &security.Match{NotDestinationPorts: []uint32{8080}}, []*Conn{fromWeb, fromAdmin}, []bool{false, true}},

		{"fields are ANDed", &security.Match{Namespaces: []*security.StringMatch{exactM("shop")}, DestinationPorts: []uint32{9090}}, []*Conn{fromWeb, fromAdmin}, []bool{false, false}},
		{"positive and negative of one field", &security.Match{Principals: []*security.StringMatch{presenceM()}, NotPrincipals: []*security.StringMatch{suffixM("/sa/admin")}}, []*Conn{fromWeb, fromAdmin, plain}, []bool{true, false, false}},
		{"port exception with no identity", &security.Match{DestinationPorts: []uint32{8080}, NotPrincipals: []*security.StringMatch{presenceM()}}, []*Conn{fromWeb, plain, conn("", "10.1.0.5", "10.2.0.7", 80)}, []bool{false, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, policy("ns", "p", security.Scope_NAMESPACE, security.Action_ALLOW, []*security.Match{tt.match}))
			a := policy("ns", "p", security.Scope_NAMESPACE, security.Action_ALLOW, []*security.Match{tt.match})
			for i, c := range tt.conns {
				if got := p.Matches(c); got != tt.want[i] {
					t.Errorf("conn %d (%+v): got %v, want %v", i, *c, got, tt.want[i])
				}
				if got := refMatches(a, c); got != tt.want[i] {
					t.Errorf("reference, conn %d: got %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
}

func TestRulesAndClauses(t *testing.T) {
	c := conn(web, "10.1.0.5", "10.2.0.7", 8080)
	shop := &security.Match{Namespaces: []*security.StringMatch{exactM("shop")}}
	ops := &security.Match{Namespaces: []*security.StringMatch{exactM("ops")}}
	p8080 := &security.Match{DestinationPorts: []uint32{8080}}
	p9090 := &security.Match{DestinationPorts: []uint32{9090}}
	tests := []struct {
		name string
		a    *security.Authorization
		want bool
	}{
		{"no rules matches nothing", &security.Authorization{Name: "p", Namespace: "ns"}, false},
		{"rule without clauses matches everything", &security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{}}}, true},
		{"clause without matches matches", &security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{{Clauses: []*security.Clause{{}}}}}, true},
		{"clauses are ANDed: both hold", policy("ns", "p", 0, 0, []*security.Match{shop}, []*security.Match{p8080}), true},
		{"clauses are ANDed: one fails", policy("ns", "p", 0, 0, []*security.Match{shop}, []*security.Match{p9090}), false},
		{"matches are ORed", policy("ns", "p", 0, 0, []*security.Match{ops, p8080}), true},
		{"matches are ORed: none", policy("ns", "p", 0, 0, []*security.Match{ops, p9090}), false},
		{"rules are ORed", &security.Authorization{Name: "p", Namespace: "ns", Rules: []*security.Rule{
			{Clauses: []*security.Clause{{Matches: []*security.Match{ops}}}},
			{Clauses: []*security.Clause{{Matches: []*security.Match{p8080}}}},
		}}, true},
		{"clause of an empty match fails", policy("ns", "p", 0, 0, []*security.Match{{}}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustCompile(t, tt.a).Matches(c); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if got := refMatches(tt.a, c); got != tt.want {
				t.Errorf("reference: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSetIdentity(t *testing.T) {
	tests := []struct {
		id, principal, ns, sa string
	}{
		{"spiffe://cluster.local/ns/shop/sa/web", "cluster.local/ns/shop/sa/web", "shop", "web"},
		{"cluster.local/ns/shop/sa/web", "cluster.local/ns/shop/sa/web", "shop", "web"},
		{"", "", "", ""},
		{"spiffe://td/other/path", "td/other/path", "", ""},
		{"spiffe://td/ns//sa/x", "td/ns//sa/x", "", ""},
		{"spiffe://td/ns/a/sa/b/c", "td/ns/a/sa/b/c", "", ""},
	}
	for _, tt := range tests {
		var c Conn
		c.SetIdentity(tt.id)
		if c.Principal != tt.principal || c.Namespace != tt.ns || c.ServiceAccount != tt.sa {
			t.Errorf("SetIdentity(%q): got %q %q %q, want %q %q %q", tt.id, c.Principal, c.Namespace, c.ServiceAccount, tt.principal, tt.ns, tt.sa)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	bad := []*security.Authorization{
		{Namespace: "ns"},
		{Name: "p"},
		{Name: "p", Namespace: "ns", Scope: 7},
		{Name: "p", Namespace: "ns", Action: 5},
		policy("ns", "p", 0, 0, []*security.Match{{SourceIps: []*security.Address{{Address: []byte{1, 2, 3}, Length: 8}}}}),
		policy("ns", "p", 0, 0, []*security.Match{{NotDestinationIps: []*security.Address{{Address: []byte{1, 2, 3, 4}, Length: 33}}}}),
	}
	for i, a := range bad {
		if _, err := compilePB(t, a); err == nil {
			t.Errorf("%d: Compile(%v): got no error, want one", i, a)
		}
	}
}
