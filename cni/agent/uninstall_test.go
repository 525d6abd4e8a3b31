package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStopKeepsOrUninstalls stops the agent twice: with its DaemonSet present (a restart)
// everything stays; with it gone (an uninstall) the plugin leaves the chain and the bin dir,
// the pod's redirection and annotation go, and so does the node's probe rule.
func TestStopKeepsOrUninstalls(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	h.cfg.CNIBinDir, h.cfg.CNIConfDir = filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	h.cfg.PluginBinary = filepath.Join(dir, "ambit-cni-src")
	h.cfg.DaemonSet = "istio-system/istio-cni-node"
	for _, d := range []string{h.cfg.CNIBinDir, h.cfg.CNIConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(h.cfg.PluginBinary, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(h.cfg.CNIConfDir, "10-bridge.conflist")
	if err := os.WriteFile(conflist, []byte(`{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "istio-cni-node", Namespace: "istio-system"}}
	if _, err := h.client.AppsV1().DaemonSets("istio-system").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fakeProc(t, h.cfg.ProcRoot, "100", "uid-web", holdNetns(t))
	if _, err := h.client.CoreV1().Pods("demo").Create(ctx, testPod("web", "uid-web", "10.244.1.7", map[string]string{"istio.io/dataplane-mode": "ambient"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	installed := func() bool {
		b, _ := os.ReadFile(conflist)
		_, err := os.Stat(filepath.Join(h.cfg.CNIBinDir, "ambit-cni"))
		return strings.Contains(string(b), "ambit-cni") && err == nil
	}

	stop := h.start(t)
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "the pod to be enrolled", func() bool { return z.holds("uid-web") && h.annotation(t, "web") == "enabled" })
	waitFor(t, "the plugin to be installed", installed)
	// The probe rule is rewritten after the enrolment, by its own goroutine: a stop before
	// that rewrite would find no rule to keep.
	waitFor(t, "the probe rule to name the pod", func() bool { return strings.Contains(h.probeRules(t), "10.244.1.7") })
	stop()
	if !installed() || h.backend.has("unenroll web") || !strings.Contains(h.probeRules(t), "10.244.1.7") {
		t.Fatalf("a stop with the DaemonSet present changed the node: plugin installed %v, backend calls %q, probe rules:\n%s",
			installed(), h.backend.calls, h.probeRules(t))
	}

	stop = h.start(t)
	waitFor(t, "the restarted agent to recover the pod", func() bool {
		h.backend.mu.Lock()
		defer h.backend.mu.Unlock()
		n := 0
		for _, c := range h.backend.calls {
			if c == "enroll web" {
				n++
			}
		}
		return n == 2
	})
	if err := h.client.AppsV1().DaemonSets("istio-system").Delete(ctx, "istio-cni-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop()
	b, _ := os.ReadFile(conflist)
	if strings.Contains(string(b), "ambit-cni") || !strings.Contains(string(b), "bridge") {
		t.Errorf("conflist after uninstall:\n%s\nwant the bridge plugin alone", b)
	}
	if _, err := os.Stat(filepath.Join(h.cfg.CNIBinDir, "ambit-cni")); !os.IsNotExist(err) {
		t.Errorf("the plugin binary is still in the bin dir after uninstall (stat: %v)", err)
	}
	if !h.backend.has("unenroll web") {
		t.Errorf("backend calls = %q; want the pod unenrolled", h.backend.calls)
	}
	if got := h.annotation(t, "web"); got != "" {
		t.Errorf("annotation after uninstall = %q, want none", got)
	}
	if r := h.probeRules(t); strings.Contains(r, "snat to") {
		t.Errorf("probe rules after uninstall:\n%s", r)
	}
}
