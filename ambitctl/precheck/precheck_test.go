package precheck

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestKernelVersions(t *testing.T) {
	for kv, want := range map[string]bool{
		"6.18.44-fc-v1045": true, "6.6.0": true, "6.1.0-18-amd64": true, "5.15.0-91-generic": true, "5.10.0": true, "5.4.0-150-generic": false,
		"7.0": true, "garbage": false, "": false,
	} {
		if got := atLeast(kv, minEBPFKernel); got != want {
			t.Errorf("atLeast(%q) = %v; want %v", kv, got, want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, tc := range []struct {
		major, minor string
		want         Status
	}{{"1", "34", Pass}, {"1", "30+", Pass}, {"1", "29", Fail}, {"2", "0", Warn}, {"1", "x", Warn}} {
		if got := version(tc.major, tc.minor); got.Status != tc.want {
			t.Errorf("version %s.%s: %v (%s); want %v", tc.major, tc.minor, got.Status, got.Message, tc.want)
		}
	}
}

// Another Istio's control plane or node proxies fail the check, naming them; Ambit's own do not.
func TestConflicts(t *testing.T) {
	ours := map[string]string{componentLabel: "ztunnel"}
	k := fake.NewClientset(
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod-1-24", Namespace: "istio-system", Labels: map[string]string{"app": "istiod"}}},
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel", Namespace: "istio-system", Labels: ours}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{KernelVersion: "5.4.0"}}},
	)
	rs := conflicts(context.Background(), k)
	if len(rs) != 1 || rs[0].Status != Fail || !strings.Contains(rs[0].Message, "istio-system/istiod-1-24") || strings.Contains(rs[0].Message, "DaemonSet") {
		t.Errorf("conflicts: %+v; want one failure naming only istiod-1-24", rs)
	}
	ks := kernels(context.Background(), k)
	if len(ks) != 1 || ks[0].Status != Warn || !strings.Contains(ks[0].Message, "n1 (5.4.0)") {
		t.Errorf("kernels: %+v; want a warning naming n1", ks)
	}
}
