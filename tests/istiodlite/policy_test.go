package istiodlite

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/istiod-lite/kube"
	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

const policies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/NS/sa/client"]}}]
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
`

func TestPoliciesReachClientsWithStatus(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	istiod := startIstiod(t)
	ns := c.Namespace(t, nil)
	if err := c.Apply(ctx, ns, strings.ReplaceAll(pods, "node-2", "node-1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, ns, strings.ReplaceAll(policies, "NS", ns)); err != nil {
		t.Fatal(err)
	}

	x := dial(t, istiod.PlaintextAddr, "node-1", nil)
	x.sendType(model.AuthorizationType, &discovery.DeltaDiscoveryRequest{})
	allowKey, strictKey := ns+"/allow-client", "istio-system/istio_converted_static_strict"
	uidA := "Kubernetes//Pod/" + ns + "/a"
	x.waitFor("the policies and pod a listing them", func() bool {
		_, allow := x.state[allowKey]
		_, strict := x.state[strictKey]
		w := x.state[uidA].addr.GetWorkload()
		want := []string{allowKey, strictKey}
		slices.Sort(want)
		return allow && strict && slices.Equal(w.GetAuthorizationPolicies(), want)
	})
	a := x.state[allowKey].authz
	if a.GetAction() != security.Action_ALLOW || a.GetScope() != security.Scope_WORKLOAD_SELECTOR || len(a.GetRules()) != 1 {
		t.Errorf("allow-client = %v; want an ALLOW selector policy with the principal rule only", a)
	}
	if p := a.GetRules()[0].GetClauses()[0].GetMatches()[0].GetPrincipals(); len(p) != 1 || p[0].GetExact() != "cluster.local/ns/"+ns+"/sa/client" {
		t.Errorf("principals = %v; want the client's", p)
	}

	// The dropped methods rule is reported on the policy, as Istio does.
	ic, err := istioclient.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Wait(ctx, 30*time.Second, "the ZtunnelAccepted condition", func(ctx context.Context) (bool, error) {
		p, err := ic.SecurityV1().AuthorizationPolicies(ns).Get(ctx, "allow-client", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == kube.ConditionZtunnelAccepted {
				if cond.Status != "False" || !strings.Contains(cond.Message, "rules[1]") || !strings.Contains(cond.Message, "methods") {
					t.Errorf("condition = %v; want False naming rules[1]'s methods", cond)
				}
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Deleting the PeerAuthentication takes the static STRICT policy away from the workload.
	if err := ic.SecurityV1().PeerAuthentications(ns).Delete(ctx, "strict", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	x.waitFor("the STRICT policy gone", func() bool {
		_, strict := x.state[strictKey]
		w := x.state[uidA].addr.GetWorkload()
		return !strict && slices.Equal(w.GetAuthorizationPolicies(), []string{allowKey})
	})
}
