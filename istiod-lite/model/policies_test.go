package model

import (
	"slices"
	"testing"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

func TestIndexPolicies(t *testing.T) {
	s := store.NewStore()
	x := NewIndex(DefaultConfig(), s)
	var statuses []PolicyStatus
	x.OnPolicyStatus(func(st PolicyStatus) { statuses = append(statuses, st) })
	x.SetPod(pod("a", "node-1", "10.244.1.5", map[string]string{"app": "web"}))
	x.SetPod(pod("b", "node-1", "10.244.1.6", map[string]string{"app": "db"}))

	ap := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-web", Namespace: "ns", Generation: 3},
		Spec: v1beta1.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			Action:   v1beta1.AuthorizationPolicy_ALLOW,
			Rules: []*v1beta1.Rule{
				{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Principals: []string{"cluster.local/ns/ns/sa/client"}}}}},
				{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{Methods: []string{"GET"}}}}},
			},
		},
	}
	if err := x.SetAuthorizationPolicy(ap); err != nil {
		t.Fatal(err)
	}
	if s.Len(AuthorizationType) != 1 {
		t.Fatalf("store holds %d authorizations; want 1", s.Len(AuthorizationType))
	}
	wa := view(t, s, "node-1")["Kubernetes//Pod/ns/a"].GetWorkload()
	wb := view(t, s, "node-1")["Kubernetes//Pod/ns/b"].GetWorkload()
	if !slices.Equal(wa.GetAuthorizationPolicies(), []string{"ns/allow-web"}) || len(wb.GetAuthorizationPolicies()) != 0 {
		t.Errorf("policy lists: a %v, b %v; want a [ns/allow-web], b none", wa.GetAuthorizationPolicies(), wb.GetAuthorizationPolicies())
	}
	if len(statuses) != 1 || statuses[0].Generation != 3 || len(statuses[0].Dropped) != 1 {
		t.Errorf("statuses = %+v; want one for generation 3 with the methods rule dropped", statuses)
	}

	// A namespace-wide STRICT PeerAuthentication: the static STRICT policy is served and
	// listed by every workload of the namespace.
	pa := &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: "ns"},
		Spec:       v1beta1.PeerAuthentication{Mtls: &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}},
	}
	if err := x.SetPeerAuthentication(pa); err != nil {
		t.Fatal(err)
	}
	wb = view(t, s, "node-1")["Kubernetes//Pod/ns/b"].GetWorkload()
	if !slices.Equal(wb.GetAuthorizationPolicies(), []string{"istio-system/istio_converted_static_strict"}) {
		t.Errorf("b lists %v under STRICT; want the static strict policy", wb.GetAuthorizationPolicies())
	}
	if s.Len(AuthorizationType) != 2 {
		t.Errorf("store holds %d authorizations; want the policy and the static strict one", s.Len(AuthorizationType))
	}

	x.DeletePeerAuthentication("ns", "strict")
	x.DeleteAuthorizationPolicy("ns", "allow-web")
	if s.Len(AuthorizationType) != 0 {
		t.Errorf("after deletes the store holds %d authorizations; want 0", s.Len(AuthorizationType))
	}
	if wa := view(t, s, "node-1")["Kubernetes//Pod/ns/a"].GetWorkload(); len(wa.GetAuthorizationPolicies()) != 0 {
		t.Errorf("after deletes a lists %v; want none", wa.GetAuthorizationPolicies())
	}
}
