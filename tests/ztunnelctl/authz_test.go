package ztunnelctl

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/authz"
	iauthz "github.com/ambit-mesh/ambit/istiod-lite/model/authz"
)

const root = "istio-system"

func authorizationPolicy(ns, name string, action v1beta1.AuthorizationPolicy_Action, selector map[string]string, rules ...*v1beta1.Rule) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1beta1.AuthorizationPolicy{Action: action, Rules: rules}}
	if selector != nil {
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	return p
}

func from(s *v1beta1.Source) *v1beta1.Rule {
	return &v1beta1.Rule{From: []*v1beta1.Rule_From{{Source: s}}}
}

func to(op *v1beta1.Operation) *v1beta1.Rule {
	return &v1beta1.Rule{To: []*v1beta1.Rule_To{{Operation: op}}}
}

func newConn(id, src string, port uint16) *authz.Conn {
	c := &authz.Conn{Source: ip(src), Destination: ip("10.244.1.5"), Port: port}
	c.SetIdentity(id)
	return c
}

// TestConvertedPoliciesDecide cross-checks internal/authz with istiod-lite's converter: real
// AuthorizationPolicy and PeerAuthentication objects, converted as istiod-lite serves them,
// decide connections to shop/web-1 (labels app=web) as Istio documents.
func TestConvertedPoliciesDecide(t *testing.T) {
	const (
		webSA   = "spiffe://cluster.local/ns/shop/sa/web"
		opsSA   = "spiffe://cluster.local/ns/ops/sa/admin"
		shopDB  = "spiffe://cluster.local/ns/shop/sa/db"
		allow   = v1beta1.AuthorizationPolicy_ALLOW
		deny    = v1beta1.AuthorizationPolicy_DENY
		srcShop = "10.244.2.6"
		srcOps  = "192.168.7.7"
	)
	conns := map[string]*authz.Conn{
		"ops:8080":   newConn(opsSA, srcOps, 8080),
		"db:8080":    newConn(shopDB, srcShop, 8080),
		"db:9090":    newConn(shopDB, srcShop, 9090),
		"plain:8080": newConn("", srcShop, 8080),
		"plain:9090": newConn("", srcShop, 9090),
		"web:8080":   newConn(webSA, srcShop, 8080),
	}
	tests := []struct {
		name     string
		policies []*securityv1.AuthorizationPolicy
		peer     []*securityv1.PeerAuthentication
		want     map[string]bool // connection -> allowed
	}{
		{"allow from namespace", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, map[string]string{"app": "web"}, from(&v1beta1.Source{Namespaces: []string{"ops"}})),
		}, nil, map[string]bool{"ops:8080": true, "db:8080": false, "plain:8080": false}},
		{"allow principals with wildcard", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, nil, from(&v1beta1.Source{Principals: []string{"cluster.local/ns/shop/*"}})),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": true, "web:8080": true, "plain:8080": false}},
		{"allow service account of the policy's namespace", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, nil, from(&v1beta1.Source{ServiceAccounts: []string{"db"}})),
		}, nil, map[string]bool{"db:8080": true, "web:8080": false, "plain:8080": false}},
		{"deny ip blocks", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", deny, nil, from(&v1beta1.Source{IpBlocks: []string{"192.168.0.0/16"}})),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": true}},
		{"allow not ports", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, nil, to(&v1beta1.Operation{NotPorts: []string{"9090"}})),
		}, nil, map[string]bool{"db:8080": true, "db:9090": false}},
		{"allow when destination.port and source.namespace", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, nil, &v1beta1.Rule{When: []*v1beta1.Condition{
				{Key: "destination.port", Values: []string{"8080"}},
				{Key: "source.namespace", NotValues: []string{"ops"}},
			}}),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": true, "db:9090": false, "plain:8080": true}},
		{"allow with HTTP methods is dropped: denies", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", allow, nil, to(&v1beta1.Operation{Methods: []string{"GET"}})),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": false}},
		{"deny with only HTTP paths denies everything", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", deny, nil, to(&v1beta1.Operation{Paths: []string{"/admin"}})),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": false, "plain:8080": false}},
		{"mesh-wide deny in the root namespace", []*securityv1.AuthorizationPolicy{
			authorizationPolicy(root, "p", deny, nil, from(&v1beta1.Source{Namespaces: []string{"ops"}})),
		}, nil, map[string]bool{"ops:8080": false, "db:8080": true}},
		{"selector not matching web", []*securityv1.AuthorizationPolicy{
			authorizationPolicy("shop", "p", deny, map[string]string{"app": "db"}, from(&v1beta1.Source{Namespaces: []string{"shop"}})),
		}, nil, map[string]bool{"db:8080": true}},
		{"strict namespace", nil, []*securityv1.PeerAuthentication{
			{ObjectMeta: metav1.ObjectMeta{Name: "ns", Namespace: "shop"}, Spec: v1beta1.PeerAuthentication{
				Mtls: &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}}},
		}, map[string]bool{"plain:8080": false, "plain:9090": false, "db:8080": true}},
		{"strict workload with a permissive port", nil, []*securityv1.PeerAuthentication{
			{ObjectMeta: metav1.ObjectMeta{Name: "wl", Namespace: "shop"}, Spec: v1beta1.PeerAuthentication{
				Selector:      &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
				Mtls:          &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT},
				PortLevelMtls: map[uint32]*v1beta1.PeerAuthentication_MutualTLS{9090: {Mode: v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE}}}},
		}, map[string]bool{"plain:8080": false, "plain:9090": true, "db:8080": true}},
		{"permissive workload with a strict port", nil, []*securityv1.PeerAuthentication{
			{ObjectMeta: metav1.ObjectMeta{Name: "wl", Namespace: "shop"}, Spec: v1beta1.PeerAuthentication{
				Selector:      &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
				PortLevelMtls: map[uint32]*v1beta1.PeerAuthentication_MutualTLS{8080: {Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}}}},
		}, map[string]bool{"plain:8080": false, "plain:9090": true, "db:8080": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var compiled []*authz.Policy
			var selected []string
			add := func(res iauthz.Result) {
				if res.Authorization == nil {
					return
				}
				// As ztunnel receives it: encoded by istiod-lite, decoded by apiwire.
				b, err := proto.Marshal(res.Authorization)
				if err != nil {
					t.Fatalf("marshal %s: %v", res.Key(), err)
				}
				a, err := apiwire.DecodeAuthorization(b)
				if err != nil {
					t.Fatalf("decode %s: %v", res.Key(), err)
				}
				p, err := authz.Compile(a)
				if err != nil {
					t.Fatalf("Compile(%s): %v", res.Key(), err)
				}
				compiled = append(compiled, p)
				// The labels of web-1 are app=web: list the selector policies that select it.
				if res.Selector != nil && (len(res.Selector) == 0 || res.Selector["app"] == "web") {
					selected = append(selected, res.Key())
				}
			}
			for _, p := range tt.policies {
				add(iauthz.ConvertAuthorizationPolicy(p, root))
			}
			if len(tt.peer) > 0 {
				add(iauthz.Result{Authorization: iauthz.StaticStrictAuthorization(root)})
				sel := iauthz.SelectPeerAuthentications(root, tt.peer)
				if sel.Workload != nil {
					add(iauthz.ConvertPeerAuthentication(sel.Workload, root, sel.Namespace, sel.Mesh))
				}
				selected = append(selected, iauthz.WorkloadPolicyKeys(root, sel)...)
			}
			set := authz.NewSet(compiled...)
			for name, allowed := range tt.want {
				if d := set.Evaluate("shop", selected, conns[name]); d.Allowed() != allowed {
					t.Errorf("%s: got %q, want allowed=%v", name, d, allowed)
				}
			}
		})
	}
}
