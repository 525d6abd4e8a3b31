package authz

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

const (
	allow = v1beta1.AuthorizationPolicy_ALLOW
	deny  = v1beta1.AuthorizationPolicy_DENY

	hint       = " (enforce L7 attributes with a waypoint: a policy with targetRefs)"
	allowLess  = ": dropped from the ALLOW policy, which now allows less than requested: "
	noneLeft   = "rules: no rule is left that ztunnel can enforce; the ALLOW policy matches nothing, so it denies every connection that no other ALLOW policy allows"
	denyMore   = "; dropped from the DENY rule, which now matches more than requested"
	denyAll    = "; dropped from the DENY rule, which now matches every connection the policy applies to"
	ignoredAll = ": nothing is left to match without what is ignored, so the DENY rule matches every connection the policy applies to"
	ignoredCnd = "; the condition is ignored"
)

// authz is the expected Authorization of policy "ns1/p".
func authz(scope security.Scope, action security.Action, rules ...*security.Rule) *security.Authorization {
	return &security.Authorization{Name: "p", Namespace: "ns1", Scope: scope, Action: action, Rules: rules}
}

func allowNS(rules ...*security.Rule) *security.Authorization {
	return authz(security.Scope_NAMESPACE, security.Action_ALLOW, rules...)
}

func denyNS(rules ...*security.Rule) *security.Authorization {
	return authz(security.Scope_NAMESPACE, security.Action_DENY, rules...)
}

func TestConvertAuthorizationPolicy(t *testing.T) {
	tests := []struct {
		name         string
		in           *securityv1.AuthorizationPolicy
		want         *security.Authorization
		wantDropped  []string
		wantSelector map[string]string
		wantTarget   bool
	}{
		{
			name: "nil policy",
			in:   nil,
		},

		// Scope, key and selector.
		{
			name: "no selector: NAMESPACE scope, key is the policy's",
			in:   policy("ns1", "p", allow, nil),
			want: allowNS(),
		},
		{
			name: "root namespace without selector: GLOBAL scope",
			in:   policy(root, "p", deny, nil),
			want: &security.Authorization{Name: "p", Namespace: root, Scope: security.Scope_GLOBAL, Action: security.Action_DENY},
		},
		{
			name:         "selector: WORKLOAD_SELECTOR scope and its labels",
			in:           policy("ns1", "p", allow, nil, withSelector(map[string]string{"app": "a", "v": "1"})),
			want:         authz(security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW),
			wantSelector: map[string]string{"app": "a", "v": "1"},
		},
		{
			name:         "selector in the root namespace stays WORKLOAD_SELECTOR",
			in:           policy(root, "p", allow, nil, withSelector(map[string]string{"app": "a"})),
			want:         &security.Authorization{Name: "p", Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR},
			wantSelector: map[string]string{"app": "a"},
		},
		{
			name:         "selector without labels: WORKLOAD_SELECTOR with an empty, non-nil selector",
			in:           policy("ns1", "p", allow, nil, withSelector(nil)),
			want:         authz(security.Scope_WORKLOAD_SELECTOR, security.Action_ALLOW),
			wantSelector: map[string]string{},
		},
		{
			name: "empty root namespace never makes GLOBAL",
			in:   policy("", "p", allow, nil),
			want: &security.Authorization{Name: "p", Scope: security.Scope_NAMESPACE},
		},

		// What does not reach ztunnel.
		{
			name: "targetRef: for waypoints",
			in: policy("ns1", "p", allow, nil, func(p *securityv1.AuthorizationPolicy) {
				p.Spec.TargetRef = &typev1beta1.PolicyTargetReference{Kind: "Gateway", Group: "gateway.networking.k8s.io", Name: "waypoint"}
			}),
			wantDropped: []string{"targetRefs: the policy applies to the waypoints or gateways it names and is enforced there, not by ztunnel"},
			wantTarget:  true,
		},
		{
			name: "targetRefs with a selector too: still for waypoints",
			in: policy("ns1", "p", deny, nil, withSelector(map[string]string{"app": "a"}), func(p *securityv1.AuthorizationPolicy) {
				p.Spec.TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "svc"}}
			}),
			wantDropped: []string{"targetRefs: the policy applies to the waypoints or gateways it names and is enforced there, not by ztunnel"},
			wantTarget:  true,
		},
		{
			name:        "CUSTOM",
			in:          policy("ns1", "p", v1beta1.AuthorizationPolicy_CUSTOM, []*v1beta1.Rule{{}}),
			wantDropped: []string{"action CUSTOM: ztunnel does not support this action, so the policy is not enforced by ztunnel; bind it to a waypoint with targetRefs"},
		},
		{
			name:        "AUDIT",
			in:          policy("ns1", "p", v1beta1.AuthorizationPolicy_AUDIT, []*v1beta1.Rule{{}}),
			wantDropped: []string{"action AUDIT: ztunnel does not support this action, so the policy is not enforced by ztunnel; bind it to a waypoint with targetRefs"},
		},
		{
			name:        "unknown action value",
			in:          policy("ns1", "p", v1beta1.AuthorizationPolicy_Action(9), []*v1beta1.Rule{{}}),
			wantDropped: []string{"action 9: unknown value; expected ALLOW, DENY, AUDIT or CUSTOM; the policy is not sent to ztunnel"},
		},

		// Empty rules.
		{
			name: "ALLOW without rules: no rules, matches nothing (deny all)",
			in:   policy("ns1", "p", allow, []*v1beta1.Rule{}),
			want: allowNS(),
		},
		{
			name: "ALLOW with one empty rule: a rule without clauses (allow all)",
			in:   policy("ns1", "p", allow, []*v1beta1.Rule{{}}),
			want: allowNS(rule()),
		},
		{
			name: "DENY with one empty rule: a rule without clauses (deny all)",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{}}),
			want: denyNS(rule()),
		},
		{
			name:        "ALLOW: a null rule is dropped",
			in:          policy("ns1", "p", allow, []*v1beta1.Rule{nil, {From: from(&v1beta1.Source{Namespaces: []string{"a"}})}}),
			want:        allowNS(rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}))),
			wantDropped: []string{"rules[0]: null rule; dropped"},
		},
		{
			name: "DENY: a null rule reads as an empty rule (deny all)",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{From: from(&v1beta1.Source{Namespaces: []string{"a"}})}, nil}),
			want: denyNS(rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}})), rule()),
			wantDropped: []string{"rules[1]: null rule; read as an empty rule, which matches every connection the policy " +
				"applies to"},
		},

		// Every source field.
		{
			name: "principals and notPrincipals: exact, prefix, suffix, presence",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				Principals:    []string{"cluster.local/ns/a/sa/b", "cluster.local/ns/a/*", "*/sa/b", "*"},
				NotPrincipals: []string{"cluster.local/ns/x/sa/y", "td/*", "*/sa/z", "*"},
			})}}),
			want: allowNS(rule(oneOf(&security.Match{
				Principals:    []*security.StringMatch{exact("cluster.local/ns/a/sa/b"), prefix("cluster.local/ns/a/"), suffix("/sa/b"), presence()},
				NotPrincipals: []*security.StringMatch{exact("cluster.local/ns/x/sa/y"), prefix("td/"), suffix("/sa/z"), presence()},
			}))),
		},
		{
			name: "namespaces and notNamespaces",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				Namespaces:    []string{"ns", "ns-*", "*-ns", "*"},
				NotNamespaces: []string{"not-ns", "not-*", "*-not", "*"},
			})}}),
			want: allowNS(rule(oneOf(&security.Match{
				Namespaces:    []*security.StringMatch{exact("ns"), prefix("ns-"), suffix("-ns"), presence()},
				NotNamespaces: []*security.StringMatch{exact("not-ns"), prefix("not-"), suffix("-not"), presence()},
			}))),
		},
		{
			name: "serviceAccounts and notServiceAccounts: <ns>/<sa> or the policy's namespace",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				ServiceAccounts:    []string{"other/sa", "local"},
				NotServiceAccounts: []string{"other/bad", "bad-local"},
			})}}),
			want: allowNS(rule(oneOf(&security.Match{
				ServiceAccounts:    []*security.ServiceAccountMatch{sa("other", "sa"), sa("ns1", "local")},
				NotServiceAccounts: []*security.ServiceAccountMatch{sa("other", "bad"), sa("ns1", "bad-local")},
			}))),
		},
		{
			name: "ipBlocks and notIpBlocks: addresses, CIDRs, IPv6, host bits kept",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				IpBlocks:    []string{"1.2.3.4", "5.6.0.0/16", "2001:db8::/32", "10.1.2.3/8"},
				NotIpBlocks: []string{"2.2.3.4", "::1"},
			})}}),
			want: allowNS(rule(oneOf(&security.Match{
				SourceIps:    []*security.Address{cidr("1.2.3.4", 32), cidr("5.6.0.0", 16), cidr("2001:db8::", 32), cidr("10.1.2.3", 8)},
				NotSourceIps: []*security.Address{cidr("2.2.3.4", 32), cidr("::1", 128)},
			}))),
		},
		{
			name: "several sources: one clause, one match each (OR)",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(
				&v1beta1.Source{Namespaces: []string{"a"}},
				&v1beta1.Source{Principals: []string{"td/ns/b/sa/c"}, IpBlocks: []string{"10.0.0.0/8"}},
			)}}),
			want: allowNS(rule(oneOf(
				&security.Match{Namespaces: []*security.StringMatch{exact("a")}},
				&security.Match{Principals: []*security.StringMatch{exact("td/ns/b/sa/c")}, SourceIps: []*security.Address{cidr("10.0.0.0", 8)}},
			))),
		},

		// Operations.
		{
			name: "ports and notPorts",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{To: to(
				&v1beta1.Operation{Ports: []string{"80", "90"}, NotPorts: []string{"800", "0"}},
				&v1beta1.Operation{Ports: []string{"65535"}},
			)}}),
			want: allowNS(rule(oneOf(
				&security.Match{DestinationPorts: []uint32{80, 90}, NotDestinationPorts: []uint32{800, 0}},
				&security.Match{DestinationPorts: []uint32{65535}},
			))),
		},

		// Conditions.
		{
			name: "when on every L4 key: one clause each, values and notValues in one match",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{When: []*v1beta1.Condition{
				{Key: "source.ip", Values: []string{"10.10.10.10", "192.168.10.0/24"}, NotValues: []string{"90.10.10.10"}},
				{Key: "source.namespace", Values: []string{"ns", "ns-*"}, NotValues: []string{"*-not"}},
				{Key: "source.principal", Values: []string{"td/ns/a/sa/b", "*"}, NotValues: []string{"td/*"}},
				{Key: "destination.ip", Values: []string{"10.0.0.1"}, NotValues: []string{"10.0.0.0/30"}},
				{Key: "destination.port", Values: []string{"91", "92"}, NotValues: []string{"9001"}},
			}}}),
			want: allowNS(rule(
				oneOf(&security.Match{SourceIps: []*security.Address{cidr("10.10.10.10", 32), cidr("192.168.10.0", 24)}, NotSourceIps: []*security.Address{cidr("90.10.10.10", 32)}}),
				oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("ns"), prefix("ns-")}, NotNamespaces: []*security.StringMatch{suffix("-not")}}),
				oneOf(&security.Match{Principals: []*security.StringMatch{exact("td/ns/a/sa/b"), presence()}, NotPrincipals: []*security.StringMatch{prefix("td/")}}),
				oneOf(&security.Match{DestinationIps: []*security.Address{cidr("10.0.0.1", 32)}, NotDestinationIps: []*security.Address{cidr("10.0.0.0", 30)}}),
				oneOf(&security.Match{DestinationPorts: []uint32{91, 92}, NotDestinationPorts: []uint32{9001}}),
			)),
		},
		{
			name: "to, from and when together: clauses in that order (AND)",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				When: []*v1beta1.Condition{{Key: "source.ip", Values: []string{"10.0.0.0/8"}}},
				From: from(&v1beta1.Source{Namespaces: []string{"a"}}),
				To:   to(&v1beta1.Operation{Ports: []string{"80"}}),
			}}),
			want: denyNS(rule(
				oneOf(&security.Match{DestinationPorts: []uint32{80}}),
				oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
				oneOf(&security.Match{SourceIps: []*security.Address{cidr("10.0.0.0", 8)}}),
			)),
		},

		// ALLOW: a rule with anything ztunnel cannot evaluate is dropped whole.
		{
			name: "ALLOW: every HTTP-only operation field drops the rule",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{To: to(&v1beta1.Operation{
				Ports: []string{"80"}, Hosts: []string{"h"}, NotHosts: []string{"h"}, Methods: []string{"GET"},
				NotMethods: []string{"PUT"}, Paths: []string{"/a"}, NotPaths: []string{"/b"},
			})}}),
			want: allowNS(),
			wantDropped: []string{
				joinLines("rules[0]", allowLess,
					"rules[0].to[0].operation.hosts: ztunnel cannot evaluate it; ",
					"rules[0].to[0].operation.notHosts: ztunnel cannot evaluate it; ",
					"rules[0].to[0].operation.methods: ztunnel cannot evaluate it; ",
					"rules[0].to[0].operation.notMethods: ztunnel cannot evaluate it; ",
					"rules[0].to[0].operation.paths: ztunnel cannot evaluate it; ",
					"rules[0].to[0].operation.notPaths: ztunnel cannot evaluate it", hint),
				noneLeft,
			},
		},
		{
			name: "ALLOW: every L7 source field drops the rule",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				Principals: []string{"td/ns/a/sa/b"}, RequestPrincipals: []string{"iss/sub"}, NotRequestPrincipals: []string{"x"},
				RemoteIpBlocks: []string{"1.2.3.4"}, NotRemoteIpBlocks: []string{"5.6.7.8"},
				TrustDomains: []string{"td"}, NotTrustDomains: []string{"bad"},
			})}}),
			want: allowNS(),
			wantDropped: []string{
				joinLines("rules[0]", allowLess,
					"rules[0].from[0].source.requestPrincipals: ztunnel cannot evaluate it; ",
					"rules[0].from[0].source.notRequestPrincipals: ztunnel cannot evaluate it; ",
					"rules[0].from[0].source.remoteIpBlocks: ztunnel cannot evaluate it; ",
					"rules[0].from[0].source.notRemoteIpBlocks: ztunnel cannot evaluate it; ",
					"rules[0].from[0].source.trustDomains: ztunnel cannot evaluate it; ",
					"rules[0].from[0].source.notTrustDomains: ztunnel cannot evaluate it", hint),
				noneLeft,
			},
		},
		{
			name: "ALLOW: conditions on L7 keys drop the rule; other rules stay",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{
				{When: []*v1beta1.Condition{
					{Key: "source.namespace", Values: []string{"a"}},
					{Key: "request.headers[x-token]", Values: []string{"secret"}},
					{Key: "connection.sni", Values: []string{"a.example"}},
					{Key: "remote.ip", Values: []string{"1.2.3.4"}},
				}},
				{From: from(&v1beta1.Source{Namespaces: []string{"b"}})},
			}),
			want: allowNS(rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("b")}}))),
			wantDropped: []string{joinLines("rules[0]", allowLess,
				`rules[0].when[1] key "request.headers[x-token]": ztunnel cannot evaluate it; `,
				`rules[0].when[2] key "connection.sni": ztunnel cannot evaluate it; `,
				`rules[0].when[3] key "remote.ip": ztunnel cannot evaluate it`, hint)},
		},
		{
			// Istio's allow-groups test case, restated.
			name: "ALLOW: mixed L4 and L7 rules",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{
				{
					From: from(&v1beta1.Source{Principals: []string{"p1"}, RequestPrincipals: []string{"rp"}, Namespaces: []string{"n1"}}),
					To:   to(&v1beta1.Operation{Ports: []string{"80"}}),
				},
				{
					From: from(&v1beta1.Source{Principals: []string{"p2"}, Namespaces: []string{"n2"}}),
					To:   to(&v1beta1.Operation{Ports: []string{"80"}, Methods: []string{"GET"}}),
				},
				{
					From: from(&v1beta1.Source{Principals: []string{"p3"}, Namespaces: []string{"n3"}}),
					To:   to(&v1beta1.Operation{Ports: []string{"80"}}),
				},
			}),
			want: allowNS(rule(
				oneOf(&security.Match{DestinationPorts: []uint32{80}}),
				oneOf(&security.Match{Principals: []*security.StringMatch{exact("p3")}, Namespaces: []*security.StringMatch{exact("n3")}}),
			)),
			wantDropped: []string{
				"rules[0]" + allowLess + "rules[0].from[0].source.requestPrincipals: ztunnel cannot evaluate it" + hint,
				"rules[1]" + allowLess + "rules[1].to[0].operation.methods: ztunnel cannot evaluate it" + hint,
			},
		},
		{
			name: "ALLOW: malformed values drop the rule",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{
				{From: from(&v1beta1.Source{IpBlocks: []string{"10.0.0.1", "10.0.0.300"}, NotIpBlocks: []string{"10.0.0.0/33", "fe80::1%eth0", ""}})},
				{To: to(&v1beta1.Operation{Ports: []string{"http", "70000"}, NotPorts: []string{"-1", "+80"}})},
				{When: []*v1beta1.Condition{{Key: "destination.ip", Values: []string{"x"}}, {Key: "destination.port", NotValues: []string{"1-2"}}}},
			}),
			want: allowNS(),
			wantDropped: []string{
				joinLines("rules[0]", allowLess,
					`rules[0].from[0].source.ipBlocks[1]: "10.0.0.300" is not an IP address or CIDR; `,
					`rules[0].from[0].source.notIpBlocks[0]: "10.0.0.0/33" is not a CIDR; `,
					`rules[0].from[0].source.notIpBlocks[1]: "fe80::1%eth0" is not an IP address or CIDR; `,
					`rules[0].from[0].source.notIpBlocks[2]: "" is not an IP address or CIDR`),
				joinLines("rules[1]", allowLess,
					`rules[1].to[0].operation.ports[0]: "http" is not a port number (0-65535); `,
					`rules[1].to[0].operation.ports[1]: "70000" is not a port number (0-65535); `,
					`rules[1].to[0].operation.notPorts[0]: "-1" is not a port number (0-65535); `,
					`rules[1].to[0].operation.notPorts[1]: "+80" is not a port number (0-65535)`),
				joinLines("rules[2]", allowLess,
					`rules[2].when[0].values[0]: "x" is not an IP address or CIDR; `,
					`rules[2].when[1].notValues[0]: "1-2" is not a port number (0-65535)`),
				noneLeft,
			},
		},
		{
			name: "ALLOW: empty or null sources, operations and conditions drop the rule",
			in: policy("ns1", "p", allow, []*v1beta1.Rule{
				{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{}}, {}, nil}},
				{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{}}, nil}},
				{When: []*v1beta1.Condition{{Key: "source.ip"}, nil}},
			}),
			want: allowNS(),
			wantDropped: []string{
				joinLines("rules[0]", allowLess,
					"rules[0].from[0].source: empty; ",
					"rules[0].from[1].source: empty; ",
					"rules[0].from[2].source: empty"),
				joinLines("rules[1]", allowLess,
					"rules[1].to[0].operation: empty; ",
					"rules[1].to[1].operation: empty"),
				joinLines("rules[2]", allowLess,
					"rules[2].when[0]: empty; ",
					"rules[2].when[1]: empty"),
				noneLeft,
			},
		},

		// DENY: what ztunnel cannot evaluate is dropped from each source, operation or condition,
		// which then matches more (fail closed); one left with nothing matches every connection.
		{
			name: "DENY: L7 source fields dropped, L4 ones kept (more restrictive)",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{From: from(&v1beta1.Source{
				Principals: []string{"td/ns/foo/sa/bar"}, NotRequestPrincipals: []string{"example.com/sub-1"},
			})}}),
			want: denyNS(rule(oneOf(&security.Match{Principals: []*security.StringMatch{exact("td/ns/foo/sa/bar")}}))),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].from[0].source.notRequestPrincipals" +
				denyMore + hint},
		},
		{
			name: "DENY: port kept without the method",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{Namespaces: []string{"a"}}),
				To:   to(&v1beta1.Operation{Ports: []string{"80"}, Methods: []string{"GET"}}),
			}}),
			want: denyNS(rule(
				oneOf(&security.Match{DestinationPorts: []uint32{80}}),
				oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
			)),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].to[0].operation.methods" + denyMore + hint},
		},
		{
			name: "DENY: only L7 source attributes: denies every connection (Istio ambient: no effect)",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{From: from(&v1beta1.Source{NotRequestPrincipals: []string{"example.com/sub-1"}})}}),
			want: denyNS(rule()),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].from[0].source.notRequestPrincipals" +
				denyAll + hint},
		},
		{
			name: "DENY: only methods, no waypoint: denies every connection (Istio ambient: no effect)",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{To: to(&v1beta1.Operation{Methods: []string{"DELETE"}})}}),
			want: denyNS(rule()),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].to[0].operation.methods" +
				denyAll + hint},
		},
		{
			name: "DENY: L4 source AND methods-only operation: denies the source on every port (Istio ambient: no effect)",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{Principals: []string{"td/ns/foo/sa/bar"}}),
				To:   to(&v1beta1.Operation{Methods: []string{"GET"}}),
			}}),
			want:        denyNS(rule(oneOf(&security.Match{Principals: []*security.StringMatch{exact("td/ns/foo/sa/bar")}}))),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].to[0].operation.methods" + denyMore + hint},
		},
		{
			name: "DENY: L4 source AND L7 condition: denies the source whatever the header (Istio ambient: no effect)",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{Principals: []string{"td/ns/foo/sa/bar"}}),
				When: []*v1beta1.Condition{{Key: "request.headers[x-token]", Values: []string{"secret"}}},
			}}),
			want: denyNS(rule(oneOf(&security.Match{Principals: []*security.StringMatch{exact("td/ns/foo/sa/bar")}}))),
			wantDropped: []string{`rules[0]: ztunnel cannot evaluate rules[0].when[0] key "request.headers[x-token]"` +
				denyMore + hint},
		},
		{
			name: "DENY: an L7-only alternative matches every connection, so its whole clause does",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{Namespaces: []string{"a"}}),
				To: to(
					&v1beta1.Operation{Methods: []string{"GET"}},
					&v1beta1.Operation{Ports: []string{"80"}},
				),
			}}),
			want:        denyNS(rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}))),
			wantDropped: []string{"rules[0]: ztunnel cannot evaluate rules[0].to[0].operation.methods" + denyMore + hint},
		},
		{
			name: "DENY: an L7-only rule denies every connection, like the empty rule next to it",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{
				{},
				{From: from(&v1beta1.Source{NotRequestPrincipals: []string{"example.com/sub-1"}})},
			}),
			want: denyNS(rule(), rule()),
			wantDropped: []string{"rules[1]: ztunnel cannot evaluate rules[1].from[0].source.notRequestPrincipals" +
				denyAll + hint},
		},
		{
			// Istio's deny-groups test case, restated; its rule 2, which Istio makes never match,
			// denies every connection here.
			name: "DENY: mixed L4 and L7 rules",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{
				{
					From: from(&v1beta1.Source{Principals: []string{"p1"}, RequestPrincipals: []string{"rp"}, Namespaces: []string{"n1"}}),
					To:   to(&v1beta1.Operation{Ports: []string{"80"}}),
				},
				{
					From: from(&v1beta1.Source{Principals: []string{"p2"}, Namespaces: []string{"n2"}}),
					To:   to(&v1beta1.Operation{Ports: []string{"80"}, Methods: []string{"GET"}}),
				},
				{
					From: from(&v1beta1.Source{RequestPrincipals: []string{"rp"}}),
					To:   to(&v1beta1.Operation{Paths: []string{"/a"}, Methods: []string{"GET"}}),
				},
				{When: []*v1beta1.Condition{
					{Key: "source.namespace", Values: []string{"n4"}},
					{Key: "source.ip", Values: []string{"10.10.10.10"}, NotValues: []string{"20.20.20.20"}},
				}},
			}),
			want: denyNS(
				rule(oneOf(&security.Match{DestinationPorts: []uint32{80}}),
					oneOf(&security.Match{Principals: []*security.StringMatch{exact("p1")}, Namespaces: []*security.StringMatch{exact("n1")}})),
				rule(oneOf(&security.Match{DestinationPorts: []uint32{80}}),
					oneOf(&security.Match{Principals: []*security.StringMatch{exact("p2")}, Namespaces: []*security.StringMatch{exact("n2")}})),
				rule(),
				rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("n4")}}),
					oneOf(&security.Match{SourceIps: []*security.Address{cidr("10.10.10.10", 32)}, NotSourceIps: []*security.Address{cidr("20.20.20.20", 32)}})),
			),
			wantDropped: []string{
				"rules[0]: ztunnel cannot evaluate rules[0].from[0].source.requestPrincipals" + denyMore + hint,
				"rules[1]: ztunnel cannot evaluate rules[1].to[0].operation.methods" + denyMore + hint,
				"rules[2]: ztunnel cannot evaluate rules[2].to[0].operation.methods, rules[2].to[0].operation.paths, " +
					"rules[2].from[0].source.requestPrincipals" + denyAll + hint,
			},
		},
		{
			name: "DENY: malformed values are ignored, the rest is kept",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{Principals: []string{"a"}, IpBlocks: []string{"bad"}, NotIpBlocks: []string{"10.0.0.1", "also-bad"}}),
				To:   to(&v1beta1.Operation{Ports: []string{"80", "x"}}),
			}}),
			want: denyNS(rule(
				oneOf(&security.Match{DestinationPorts: []uint32{80}}),
				oneOf(&security.Match{Principals: []*security.StringMatch{exact("a")}, NotSourceIps: []*security.Address{cidr("10.0.0.1", 32)}}),
			)),
			wantDropped: []string{
				`rules[0].to[0].operation.ports[1]: "x" is not a port number (0-65535); the value is ignored`,
				`rules[0].from[0].source.ipBlocks[0]: "bad" is not an IP address or CIDR; the value is ignored`,
				`rules[0].from[0].source.notIpBlocks[1]: "also-bad" is not an IP address or CIDR; the value is ignored`,
			},
		},
		{
			name: "DENY: a source with only malformed values matches every connection, and so does its clause",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{{
				From: from(&v1beta1.Source{IpBlocks: []string{"10.0.0.300"}}, &v1beta1.Source{Namespaces: []string{"a"}}),
				To:   to(&v1beta1.Operation{Ports: []string{"80"}}),
			}}),
			want:        denyNS(rule(oneOf(&security.Match{DestinationPorts: []uint32{80}}))),
			wantDropped: []string{`rules[0].from[0].source.ipBlocks[0]: "10.0.0.300" is not an IP address or CIDR; the value is ignored`},
		},
		{
			name: "DENY: a condition with only malformed values is ignored: the rule denies every connection",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{When: []*v1beta1.Condition{{Key: "destination.port", Values: []string{"http"}}}}}),
			want: denyNS(rule()),
			wantDropped: []string{
				`rules[0].when[0].values[0]: "http" is not a port number (0-65535); the value is ignored`,
				"rules[0]" + ignoredAll,
			},
		},
		{
			name: "DENY: conditions without values and null conditions are ignored",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{
				{
					From: from(&v1beta1.Source{Namespaces: []string{"a"}}),
					When: []*v1beta1.Condition{{Key: "source.ip"}, nil, {Key: "destination.port", Values: []string{"80"}}},
				},
				{When: []*v1beta1.Condition{nil}},
			}),
			want: denyNS(
				rule(
					oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("a")}}),
					oneOf(&security.Match{DestinationPorts: []uint32{80}}),
				),
				rule(),
			),
			wantDropped: []string{
				"rules[0].when[0]: no values or notValues" + ignoredCnd,
				"rules[0].when[1]: null condition" + ignoredCnd,
				"rules[1].when[0]: null condition" + ignoredCnd,
				"rules[1]" + ignoredAll,
			},
		},
		{
			// The API reads every unset source or operation field as "any": enforced as written.
			name: "DENY: an empty or null source or operation means any, without a message",
			in: policy("ns1", "p", deny, []*v1beta1.Rule{
				{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{}}, {Source: &v1beta1.Source{Namespaces: []string{"a"}}}}},
				{To: []*v1beta1.Rule_To{nil}},
				{
					From: from(&v1beta1.Source{Namespaces: []string{"b"}}),
					To:   []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{}}, {}},
				},
			}),
			want: denyNS(rule(), rule(), rule(oneOf(&security.Match{Namespaces: []*security.StringMatch{exact("b")}}))),
		},

		// Dry run.
		{
			name: "dry-run annotation true",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{}}, withAnnotation("istio.io/dry-run", "true")),
			want: &security.Authorization{Name: "p", Namespace: "ns1", Scope: security.Scope_NAMESPACE,
				Action: security.Action_DENY, Rules: []*security.Rule{{}}, DryRun: true},
		},
		{
			name: "dry-run annotation false",
			in:   policy("ns1", "p", deny, []*v1beta1.Rule{{}}, withAnnotation("istio.io/dry-run", "false")),
			want: denyNS(rule()),
		},
		{
			name:        "dry-run annotation not a boolean: enforced",
			in:          policy("ns1", "p", deny, []*v1beta1.Rule{{}}, withAnnotation("istio.io/dry-run", "maybe")),
			want:        denyNS(rule()),
			wantDropped: []string{`annotation istio.io/dry-run: "maybe" is not true or false; ignored, the policy is enforced`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *v1beta1.AuthorizationPolicy
			if tt.in != nil {
				before = proto.Clone(&tt.in.Spec).(*v1beta1.AuthorizationPolicy)
			}
			got := ConvertAuthorizationPolicy(tt.in, root)
			checkAuthorization(t, got.Authorization, tt.want)
			checkStrings(t, "Dropped", got.Dropped, tt.wantDropped)
			checkLabels(t, got.Selector, tt.wantSelector)
			if got.TargetRefs != tt.wantTarget {
				t.Errorf("TargetRefs: got %t, want %t", got.TargetRefs, tt.wantTarget)
			}
			if tt.want != nil && got.Key() != tt.want.Namespace+"/"+tt.want.Name {
				t.Errorf("Key(): got %q, want %q", got.Key(), tt.want.Namespace+"/"+tt.want.Name)
			}
			if tt.in != nil && !proto.Equal(&tt.in.Spec, before) {
				t.Errorf("the input policy was modified")
			}
		})
	}
}

func TestResultKey(t *testing.T) {
	if got := (Result{}).Key(); got != "" {
		t.Errorf("Key() without Authorization: got %q, want \"\"", got)
	}
	r := Result{Authorization: &security.Authorization{Name: "n", Namespace: "ns"}}
	if got, want := r.Key(), "ns/n"; got != want {
		t.Errorf("Key(): got %q, want %q", got, want)
	}
}

// TestSelectorIsACopy checks that changing the returned selector leaves the policy alone.
func TestSelectorIsACopy(t *testing.T) {
	p := policy("ns1", "p", allow, nil, withSelector(map[string]string{"app": "a"}))
	got := ConvertAuthorizationPolicy(p, root)
	got.Selector["app"] = "changed"
	if v := p.Spec.Selector.MatchLabels["app"]; v != "a" {
		t.Errorf("policy selector after changing the result: got %q, want %q", v, "a")
	}
}
