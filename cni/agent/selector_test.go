package agent

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestWantEnrolled(t *testing.T) {
	pod := func(labels map[string]string, hostNet bool) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: labels},
			Spec: corev1.PodSpec{HostNetwork: hostNet}}
	}
	ns := func(labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: labels}}
	}
	const key = "istio.io/dataplane-mode"
	ambient := map[string]string{key: "ambient"}
	none := map[string]string{key: "none"}
	tests := []struct {
		name    string
		pod     *corev1.Pod
		ns      *corev1.Namespace
		want    bool
		warning string
	}{
		{"nothing labelled", pod(nil, false), ns(nil), false, ""},
		{"pod ambient", pod(ambient, false), ns(nil), true, ""},
		{"namespace ambient", pod(nil, false), ns(ambient), true, ""},
		{"namespace ambient, pod none", pod(none, false), ns(ambient), false, ""},
		{"pod ambient, namespace none", pod(ambient, false), ns(none), true, ""},
		{"host network", pod(ambient, true), ns(ambient), false, ""},
		{"ztunnel itself", pod(map[string]string{"app": "ztunnel"}, false), ns(ambient), false, ""},
		{"namespace unknown yet", pod(nil, false), nil, false, ""},
		{"typo on the pod", pod(map[string]string{key: "ambiant"}, false), ns(ambient), true,
			`pod ns/p: label istio.io/dataplane-mode has value "ambiant"; expected ambient or none`},
		{"typo on the namespace", pod(nil, false), ns(map[string]string{key: "Ambient"}), false,
			`namespace ns: label istio.io/dataplane-mode has value "Ambient"; expected ambient or none`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := wantEnrolled(tt.pod, tt.ns)
			if d.enroll != tt.want {
				t.Errorf("enroll = %v, want %v", d.enroll, tt.want)
			}
			got := strings.Join(d.warnings, "\n")
			if tt.warning == "" && got != "" || !strings.Contains(got, tt.warning) {
				t.Errorf("warnings = %q, want %q", got, tt.warning)
			}
		})
	}
}
