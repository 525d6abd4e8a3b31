package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

type mtlsMode = v1beta1.PeerAuthentication_MutualTLS_Mode

const (
	unset      = v1beta1.PeerAuthentication_MutualTLS_UNSET
	disable    = v1beta1.PeerAuthentication_MutualTLS_DISABLE
	permissive = v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
	strict     = v1beta1.PeerAuthentication_MutualTLS_STRICT
	// noMTLS leaves the mtls field out (same meaning as UNSET).
	noMTLS mtlsMode = -1
)

var appA = map[string]string{"app": "a"}

// peerAuth builds a PeerAuthentication created at second `created`.
func peerAuth(ns, name string, m mtlsMode, labels map[string]string, ports map[uint32]mtlsMode, created int64) *securityv1.PeerAuthentication {
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Unix(created, 0)),
	}}
	if m != noMTLS {
		pa.Spec.Mtls = &v1beta1.PeerAuthentication_MutualTLS{Mode: m}
	}
	if labels != nil {
		pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: labels}
	}
	if ports != nil {
		pa.Spec.PortLevelMtls = map[uint32]*v1beta1.PeerAuthentication_MutualTLS{}
		for p, pm := range ports {
			if pm == noMTLS {
				pa.Spec.PortLevelMtls[p] = nil
				continue
			}
			pa.Spec.PortLevelMtls[p] = &v1beta1.PeerAuthentication_MutualTLS{Mode: pm}
		}
	}
	return pa
}

func mesh(m mtlsMode) *securityv1.PeerAuthentication {
	return peerAuth(root, "default", m, nil, nil, 0)
}

func nsWide(m mtlsMode) *securityv1.PeerAuthentication {
	return peerAuth("foo", "default", m, nil, nil, 0)
}

func workload(m mtlsMode, ports map[uint32]mtlsMode) *securityv1.PeerAuthentication {
	return peerAuth("foo", "workload", m, appA, ports, 0)
}

func convertedPA(rules ...*security.Rule) *security.Authorization {
	return &security.Authorization{
		Name: "converted_peer_authentication_workload", Namespace: "foo",
		Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY, Rules: rules,
	}
}

func noID() *security.Clause {
	return oneOf(&security.Match{NotPrincipals: []*security.StringMatch{presence()}})
}

func notPort(p uint32) *security.Clause {
	return oneOf(&security.Match{NotDestinationPorts: []uint32{p}})
}

func strictPort(p uint32) *security.Rule {
	return rule(oneOf(&security.Match{DestinationPorts: []uint32{p}, NotPrincipals: []*security.StringMatch{presence()}}))
}

const disableMsg = ": DISABLE: ztunnel always uses mTLS between meshed workloads; treated as PERMISSIVE (plaintext is accepted)"

func TestStaticStrictAuthorization(t *testing.T) {
	want := &security.Authorization{
		Name: "istio_converted_static_strict", Namespace: root,
		Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Rules: []*security.Rule{rule(noID())},
	}
	checkAuthorization(t, StaticStrictAuthorization(root), want)
}

func TestConvertPeerAuthentication(t *testing.T) {
	tests := []struct {
		name         string
		pa, ns, mesh *securityv1.PeerAuthentication
		want         *security.Authorization
		wantDropped  []string
	}{
		{name: "nil"},
		// Istio's testdata cases (pilot/pkg/serviceregistry/ambient/testdata/peer-authn-*), restated.
		{name: "namespace STRICT: through the static policy", pa: nsWide(strict)},
		{name: "namespace PERMISSIVE", pa: nsWide(permissive)},
		{name: "namespace DISABLE", pa: nsWide(disable), wantDropped: []string{"mtls.mode" + disableMsg}},
		{name: "workload STRICT without ports: through the static policy", pa: workload(strict, nil)},
		{name: "workload STRICT, port STRICT", pa: workload(strict, map[uint32]mtlsMode{8080: strict})},
		{
			name: "workload STRICT, port PERMISSIVE",
			pa:   workload(strict, map[uint32]mtlsMode{9090: permissive}),
			want: convertedPA(rule(noID(), notPort(9090))),
		},
		{
			name:        "workload STRICT, port DISABLE",
			pa:          workload(strict, map[uint32]mtlsMode{9090: disable}),
			want:        convertedPA(rule(noID(), notPort(9090))),
			wantDropped: []string{"portLevelMtls[9090].mode" + disableMsg},
		},
		{
			name: "workload STRICT, ports STRICT and PERMISSIVE",
			pa:   workload(strict, map[uint32]mtlsMode{9090: strict, 8080: permissive}),
			want: convertedPA(rule(noID(), notPort(8080))),
		},
		{
			name: "workload STRICT, two PERMISSIVE ports: one clause each, ascending",
			pa:   workload(strict, map[uint32]mtlsMode{9090: permissive, 8080: permissive, 7070: unset}),
			want: convertedPA(rule(noID(), notPort(8080), notPort(9090))),
		},
		{
			name: "workload PERMISSIVE, port STRICT",
			pa:   workload(permissive, map[uint32]mtlsMode{9090: strict}),
			want: convertedPA(strictPort(9090)),
		},
		{
			name: "workload PERMISSIVE, ports STRICT and PERMISSIVE",
			pa:   workload(permissive, map[uint32]mtlsMode{9090: strict, 8080: permissive}),
			want: convertedPA(strictPort(9090)),
		},
		{
			name:        "workload DISABLE, port STRICT",
			pa:          workload(disable, map[uint32]mtlsMode{9090: strict}),
			want:        convertedPA(strictPort(9090)),
			wantDropped: []string{"mtls.mode" + disableMsg},
		},
		{
			name: "workload UNSET, port STRICT, no parents",
			pa:   workload(unset, map[uint32]mtlsMode{8080: strict}),
			want: convertedPA(strictPort(8080)),
		},
		{
			name: "mesh STRICT, workload UNSET, port PERMISSIVE: STRICT merged in, identity clause last",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: permissive}), mesh: mesh(strict),
			want: convertedPA(rule(notPort(9090), noID())),
		},
		{
			name: "mesh PERMISSIVE, namespace STRICT, workload UNSET, port PERMISSIVE",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: permissive}), ns: nsWide(strict), mesh: mesh(permissive),
			want: convertedPA(rule(notPort(9090), noID())),
		},
		{
			name: "mesh and namespace PERMISSIVE, workload UNSET, two STRICT ports: one rule each",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: strict, 8080: strict}), ns: nsWide(permissive), mesh: mesh(permissive),
			want: convertedPA(strictPort(8080), strictPort(9090)),
		},
		{
			name: "mesh PERMISSIVE, workload UNSET, port PERMISSIVE: nothing to do",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: permissive}), mesh: mesh(permissive),
		},
		{
			name: "mesh STRICT, namespace PERMISSIVE, workload UNSET, port STRICT",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: strict}), ns: nsWide(permissive), mesh: mesh(strict),
			want: convertedPA(strictPort(9090)),
		},
		{
			name: "mesh PERMISSIVE, namespace UNSET, workload UNSET, ports STRICT and PERMISSIVE",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: strict, 8080: permissive}), ns: nsWide(unset), mesh: mesh(permissive),
			want: convertedPA(strictPort(9090)),
		},
		{
			name: "mesh STRICT, workload UNSET, ports PERMISSIVE and STRICT",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: permissive, 8080: strict}), mesh: mesh(strict),
			want: convertedPA(rule(notPort(9090), noID())),
		},

		// Where Istio's conversion differs from its own inheritance rules (see README).
		{
			name: "mesh STRICT, workload PERMISSIVE, port STRICT: the port is STRICT",
			pa:   workload(permissive, map[uint32]mtlsMode{9090: strict}), mesh: mesh(strict),
			want: convertedPA(strictPort(9090)),
		},
		{
			name: "mesh STRICT, namespace UNSET, workload UNSET, port PERMISSIVE: STRICT inherited",
			pa:   workload(noMTLS, map[uint32]mtlsMode{9090: permissive}), ns: nsWide(unset), mesh: mesh(strict),
			want: convertedPA(rule(notPort(9090), noID())),
		},
		{
			name: "namespace STRICT, workload STRICT, port PERMISSIVE: one identity clause",
			pa:   workload(strict, map[uint32]mtlsMode{9090: permissive}), ns: nsWide(strict),
			want: convertedPA(rule(noID(), notPort(9090))),
		},

		// Ignored or partly applied.
		{
			name:        "portLevelMtls without selector",
			pa:          peerAuth("foo", "p", strict, nil, map[uint32]mtlsMode{80: permissive}, 0),
			wantDropped: []string{"portLevelMtls: ignored: port-level modes need a selector with labels"},
		},
		{
			name:        "selector without labels counts as none",
			pa:          peerAuth("foo", "p", strict, map[string]string{}, map[uint32]mtlsMode{80: permissive}, 0),
			wantDropped: []string{"portLevelMtls: ignored: port-level modes need a selector with labels"},
		},
		{
			name:        "selector in the root namespace",
			pa:          peerAuth(root, "p", strict, appA, map[uint32]mtlsMode{80: permissive}, 0),
			wantDropped: []string{`selector: a PeerAuthentication with a selector in the root namespace "istio-system" is ignored in ambient mode, as in Istio`},
		},
		{
			name: "unknown modes, port 0 and ports past 65535",
			pa:   workload(mtlsMode(7), map[uint32]mtlsMode{0: strict, 70000: strict, 80: mtlsMode(9), 90: strict, 100: noMTLS}),
			want: convertedPA(strictPort(90)),
			wantDropped: []string{
				"mtls.mode: unknown value 7; expected UNSET, DISABLE, PERMISSIVE or STRICT; treated as UNSET (inherited)",
				"portLevelMtls[0].mode: not a port number (1-65535); ignored",
				"portLevelMtls[80].mode: unknown value 9; expected UNSET, DISABLE, PERMISSIVE or STRICT; treated as UNSET (inherited)",
				"portLevelMtls[70000].mode: not a port number (1-65535); ignored",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ConvertPeerAuthentication(tt.pa, root, tt.ns, tt.mesh)
			checkAuthorization(t, got.Authorization, tt.want)
			checkStrings(t, "Dropped", got.Dropped, tt.wantDropped)
			if tt.want != nil {
				checkLabels(t, got.Selector, appA)
			} else {
				checkLabels(t, got.Selector, nil)
			}
			// WorkloadPolicyKeys must reference exactly the converted policy when there is one.
			if tt.pa != nil && hasSelector(tt.pa) && tt.pa.Namespace != root {
				keys := WorkloadPolicyKeys(root, PeerAuthentications{Mesh: tt.mesh, Namespace: tt.ns, Workload: tt.pa})
				hasConverted := slices.Contains(keys, got.Key())
				if (tt.want != nil) != hasConverted {
					t.Errorf("WorkloadPolicyKeys: got %q, want the converted key %q listed: %t", keys, got.Key(), tt.want != nil)
				}
			}
		})
	}
}

func TestWorkloadPolicyKeys(t *testing.T) {
	static := root + "/istio_converted_static_strict"
	converted := "foo/converted_peer_authentication_workload"
	tests := []struct {
		name string
		in   PeerAuthentications
		want []string
	}{
		{name: "no policies: PERMISSIVE"},
		{name: "mesh UNSET: PERMISSIVE", in: PeerAuthentications{Mesh: mesh(unset)}},
		{name: "mesh STRICT", in: PeerAuthentications{Mesh: mesh(strict)}, want: []string{static}},
		{name: "mesh STRICT, namespace PERMISSIVE", in: PeerAuthentications{Mesh: mesh(strict), Namespace: nsWide(permissive)}},
		{name: "mesh STRICT, namespace UNSET", in: PeerAuthentications{Mesh: mesh(strict), Namespace: nsWide(noMTLS)}, want: []string{static}},
		{name: "namespace STRICT", in: PeerAuthentications{Namespace: nsWide(strict)}, want: []string{static}},
		{name: "namespace STRICT, workload DISABLE", in: PeerAuthentications{Namespace: nsWide(strict), Workload: workload(disable, nil)}},
		{name: "mesh PERMISSIVE, workload STRICT", in: PeerAuthentications{Mesh: mesh(permissive), Workload: workload(strict, nil)}, want: []string{static}},
		{
			name: "workload STRICT, port STRICT: static only",
			in:   PeerAuthentications{Workload: workload(strict, map[uint32]mtlsMode{80: strict})},
			want: []string{static},
		},
		{
			name: "workload STRICT, port PERMISSIVE: converted only",
			in:   PeerAuthentications{Workload: workload(strict, map[uint32]mtlsMode{80: permissive})},
			want: []string{converted},
		},
		{
			name: "namespace STRICT, workload UNSET, port DISABLE: converted only",
			in:   PeerAuthentications{Namespace: nsWide(strict), Workload: workload(unset, map[uint32]mtlsMode{80: disable})},
			want: []string{converted},
		},
		{
			name: "workload PERMISSIVE, port STRICT: converted only",
			in:   PeerAuthentications{Mesh: mesh(strict), Workload: workload(permissive, map[uint32]mtlsMode{80: strict})},
			want: []string{converted},
		},
		{
			name: "workload policy in the root namespace is ignored",
			in:   PeerAuthentications{Mesh: mesh(strict), Workload: peerAuth(root, "w", permissive, appA, nil, 0)},
			want: []string{static},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkStrings(t, "keys", WorkloadPolicyKeys(root, tt.in), tt.want)
		})
	}
}

func TestSelectPeerAuthentications(t *testing.T) {
	meshOld := peerAuth(root, "z-mesh", strict, nil, nil, 1)
	meshNew := peerAuth(root, "a-mesh", permissive, nil, nil, 2)
	nsA := peerAuth("foo", "a", permissive, nil, nil, 5)
	nsB := peerAuth("foo", "b", strict, map[string]string{}, nil, 5) // same age, empty selector
	wlOld := peerAuth("foo", "w-old", strict, appA, nil, 3)
	wlNew := peerAuth("foo", "w-new", permissive, appA, nil, 4)
	rootSel := peerAuth(root, "root-sel", permissive, appA, nil, 0)

	got := SelectPeerAuthentications(root, []*securityv1.PeerAuthentication{nil, meshNew, nsB, wlNew, rootSel, meshOld, nsA, wlOld})
	for _, c := range []struct {
		level     string
		got, want *securityv1.PeerAuthentication
	}{
		{"Mesh (oldest)", got.Mesh, meshOld},
		{"Namespace (same age: first by name; empty selector is none)", got.Namespace, nsA},
		{"Workload (oldest; root-namespace selector ignored)", got.Workload, wlOld},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.level, name(c.got), name(c.want))
		}
	}
	if got := SelectPeerAuthentications(root, nil); got != (PeerAuthentications{}) {
		t.Errorf("no candidates: got %+v, want none", got)
	}
	tieA, tieB := peerAuth("a", "same", strict, appA, nil, 0), peerAuth("b", "same", strict, appA, nil, 0)
	if got := SelectPeerAuthentications(root, []*securityv1.PeerAuthentication{tieB, tieA}).Workload; got != tieA {
		t.Errorf("tie on age and name: got %s, want %s", name(got), name(tieA))
	}
}

func name(pa *securityv1.PeerAuthentication) string {
	if pa == nil {
		return "<nil>"
	}
	return pa.Namespace + "/" + pa.Name
}

// TestPeerAuthenticationEnforcement checks every combination of mesh, namespace, workload and
// port modes end to end: the policies a workload lists, evaluated the way ztunnel does, must
// refuse plaintext exactly on the ports whose effective mode is STRICT, and never refuse a peer
// with an identity.
func TestPeerAuthenticationEnforcement(t *testing.T) {
	modes := []mtlsMode{noMTLS, unset, disable, permissive, strict}
	absent := mtlsMode(-2) // no policy at that level, or no entry for that port
	levels := append([]mtlsMode{absent}, modes...)
	ports := []uint16{80, 8080, 9090}
	for _, meshM := range levels {
		for _, nsM := range levels {
			for _, wlM := range levels {
				for _, p8080 := range levels {
					for _, p9090 := range levels {
						var in PeerAuthentications
						if meshM != absent {
							in.Mesh = mesh(meshM)
						}
						if nsM != absent {
							in.Namespace = nsWide(nsM)
						}
						portModes := map[uint32]mtlsMode{}
						if p8080 != absent {
							portModes[8080] = p8080
						}
						if p9090 != absent {
							portModes[9090] = p9090
						}
						if wlM != absent {
							in.Workload = workload(wlM, portModes)
						} else if len(portModes) > 0 {
							continue // port modes need a workload policy
						}
						desc := fmt.Sprintf("mesh=%v ns=%v workload=%v 8080=%v 9090=%v", meshM, nsM, wlM, p8080, p9090)
						checkEnforcement(t, desc, in, ports, func(port uint16) bool {
							eff := permissive
							for _, m := range []mtlsMode{meshM, nsM, wlM} {
								if m != absent && m != noMTLS && m != unset {
									eff = m
								}
							}
							pm := map[uint16]mtlsMode{8080: p8080, 9090: p9090}[port]
							if wlM != absent && pm != absent && pm != noMTLS && pm != unset {
								eff = pm
							}
							return eff == strict
						})
					}
				}
			}
		}
	}
}

func checkEnforcement(t *testing.T, desc string, in PeerAuthentications, ports []uint16, wantStrict func(uint16) bool) {
	t.Helper()
	served := map[string]*security.Authorization{Key(StaticStrictAuthorization(root)): StaticStrictAuthorization(root)}
	if in.Workload != nil {
		if a := ConvertPeerAuthentication(in.Workload, root, in.Namespace, in.Mesh).Authorization; a != nil {
			served[Key(a)] = a
		}
	}
	keys := WorkloadPolicyKeys(root, in)
	for _, k := range keys {
		if served[k] == nil {
			t.Errorf("%s: the workload lists %q, which is not served", desc, k)
		}
	}
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, port := range ports {
		for _, p := range []*peer{nil, {td: "cluster.local", ns: "bar", sa: "default"}} {
			denied := false
			for _, k := range keys {
				if a := served[k]; a != nil && ztunnelMatches(a, conn{src: src, dst: dst, port: port, peer: p}) {
					denied = true
				}
			}
			if want := p == nil && wantStrict(port); denied != want {
				t.Errorf("%s: port %d, identity %t: got denied %t, want %t (keys %q)", desc, port, p != nil, denied, want, keys)
			}
		}
	}
}
