package cluster

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodProblem(t *testing.T) {
	waiting := func(reason string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
				Name:  "c",
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: "msg"}},
			}}},
		}
	}
	tests := []struct {
		pod  *corev1.Pod
		want string
	}{
		{waiting("ErrImageNeverPull"), "pod ns/p container c: ErrImageNeverPull: msg"},
		{waiting("CrashLoopBackOff"), "pod ns/p container c: CrashLoopBackOff: msg"},
		{waiting("ContainerCreating"), ""},
		{&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}, Status: corev1.PodStatus{Phase: corev1.PodFailed, Reason: "Evicted"}}, "pod ns/p failed: Evicted: "},
	}
	for _, tt := range tests {
		if got := PodProblem(tt.pod); got != tt.want {
			t.Errorf("PodProblem = %q; want %q", got, tt.want)
		}
	}
}

func TestMissingPrerequisitesAreNamed(t *testing.T) {
	cfg, err := Config{BinDir: t.TempDir(), Images: []string{"/nonexistent/images.tar"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	err = checkPrerequisites(cfg)
	if !errors.Is(err, ErrMissingPrerequisite) {
		t.Fatalf("checkPrerequisites = %v; want ErrMissingPrerequisite", err)
	}
	for _, want := range []string{"kube-apiserver not found", "make tools", "cni/bridge", "image archive /nonexistent/images.tar not found; run `make images`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	if _, err := (Config{Nodes: -1}).withDefaults(); err == nil {
		t.Error("Nodes -1 accepted")
	}
	cfg, err := Config{BinDir: "/b", Images: []string{"/i.tar"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Nodes != 2 || cfg.PauseImage != DefaultPauseImage || cfg.StartTimeout == 0 || cfg.Logger == nil {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestSnapshotDiff(t *testing.T) {
	before := Snapshot{
		Mounts: []string{"/ 1"}, Links: []string{"lo"}, Routes: []string{"r1"}, Rules: []string{"rule1"},
		Netfilter: map[string]string{"nft": "table inet a {}"}, Sysctls: map[string]string{"vm/overcommit_memory": "0"},
	}
	if d := before.Diff(before); len(d) != 0 {
		t.Errorf("Diff of a snapshot with itself = %v; want none", d)
	}
	after := Snapshot{
		Mounts: []string{"/ 1", "/var/lib/kubelet 7"}, Links: []string{"lo", "veth0"}, Routes: nil, Rules: []string{"rule1"},
		Netfilter: map[string]string{"nft": "table inet a {}\ntable ip kube-proxy {}"}, Sysctls: map[string]string{"vm/overcommit_memory": "1"},
	}
	got := strings.Join(before.Diff(after), "\n")
	for _, want := range []string{
		"new mount in the root mount namespace: /var/lib/kubelet 7",
		"new link in the root network namespace: veth0",
		"missing route in the root network namespace: r1",
		"nft output of the root network namespace changed",
		"sysctl vm/overcommit_memory changed from 0 to 1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Diff does not report %q:\n%s", want, got)
		}
	}
}
