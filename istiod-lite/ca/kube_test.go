package ca

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// apiServerAudience is what the fake API server takes as its own audience.
const apiServerAudience = "https://kubernetes.default.svc.cluster.local"

// token is what the fake API server knows about a bearer token.
type token struct {
	user      string
	audiences []string // nil: istio-ca
	pod       *corev1.Pod
	withNode  bool // add the node keys (Kubernetes >= 1.30)
	expired   bool
}

// tokenReviewer answers TokenReviews the way kube-apiserver does for the tokens it knows.
func tokenReviewer(tokens map[string]token) k8stesting.ReactionFunc {
	return func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if tr.Spec.Token == "api-server-down" {
			return true, nil, errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
		}
		info, ok := tokens[tr.Spec.Token]
		want := tr.Spec.Audiences
		if len(want) == 0 {
			want = []string{apiServerAudience}
		}
		aud := info.audiences
		if aud == nil {
			aud = []string{"istio-ca"}
		}
		var both []string
		for _, a := range aud {
			if slices.Contains(want, a) {
				both = append(both, a)
			}
		}
		switch {
		case !ok:
			tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
		case info.expired:
			tr.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, service account token has expired]"}
		case len(both) == 0:
			tr.Status = authnv1.TokenReviewStatus{Error: fmt.Sprintf("[invalid bearer token, token audiences %q is invalid for the target audiences %q]", aud, want)}
		default:
			extra := map[string]authnv1.ExtraValue{}
			if p := info.pod; p != nil {
				extra[ExtraPodName] = authnv1.ExtraValue{p.Name}
				extra[ExtraPodUID] = authnv1.ExtraValue{string(p.UID)}
				if info.withNode {
					extra[ExtraNodeName] = authnv1.ExtraValue{p.Spec.NodeName}
					extra[ExtraNodeUID] = authnv1.ExtraValue{"uid-of-" + p.Spec.NodeName}
				}
			}
			tr.Status = authnv1.TokenReviewStatus{
				Authenticated: true,
				Audiences:     both,
				User:          authnv1.UserInfo{Username: info.user, UID: "sa-uid", Groups: []string{"system:serviceaccounts", "system:authenticated"}, Extra: extra},
			}
		}
		return true, tr, nil
	}
}

func pod(ns, name, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// startPodLister runs a real pod informer over client until the test ends.
func startPodLister(t *testing.T, client *fake.Clientset) *InformerPodLister {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(client, 0)
	pl, err := NewInformerPodLister(factory.Core().V1().Pods().Informer())
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}
	return pl
}
