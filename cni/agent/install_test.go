package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestInstallConflistEntry(t *testing.T) {
	dir := t.TempDir()
	orig := `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}`
	if err := os.WriteFile(filepath.Join(dir, "10-bridge.conflist"), []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "99-other.conflist"), []byte(`{"plugins":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	entry := map[string]any{"type": "ambit-cni", "agentSocket": "/var/run/ambit/cni-agent.sock"}
	path, changed, err := installConflistEntry(dir, entry)
	if err != nil || !changed || filepath.Base(path) != "10-bridge.conflist" {
		t.Fatalf("installConflistEntry = %s, %v, %v; want 10-bridge.conflist changed", path, changed, err)
	}
	if _, changed, err := installConflistEntry(dir, entry); err != nil || changed {
		t.Errorf("second install changed = %v, %v; want an unchanged file", changed, err)
	}
	b, _ := os.ReadFile(path)
	var got struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	var types []any
	for _, p := range got.Plugins {
		types = append(types, p["type"])
	}
	if want := []any{"bridge", "portmap", "ambit-cni"}; !reflect.DeepEqual(types, want) {
		t.Errorf("plugins = %v, want %v (ambit-cni chained last)", types, want)
	}
	if got.Plugins[0]["bridge"] != "cni0" {
		t.Errorf("the bridge entry lost its settings: %v", got.Plugins[0])
	}

	// The primary plugin rewrites its conflist without us: the entry comes back, once.
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := installConflistEntry(dir, entry); err != nil || !changed {
		t.Errorf("reinstall after a rewrite = %v, %v; want changed", changed, err)
	}
}

func TestInstallConflistWaitsForPrimary(t *testing.T) {
	if _, _, err := installConflistEntry(t.TempDir(), map[string]any{"type": "ambit-cni"}); err == nil {
		t.Error("installing into an empty config dir succeeded; want an error to retry on")
	}
}

func TestInstallBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "ambit-cni")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := installBinary(src, bin); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(bin, "ambit-cni"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v, %v; want mode 0755", st, err)
	}
}

func TestFindPodProcess(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, cgroup string) {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10", "0::/ambit-x/n1/pods/kubepods/besteffort/podaaaa-1111/0123abcd\n")
	write("20", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podbbbb_2222.slice/cri-containerd-1.scope\n")
	write("30", "0::/kubepods/besteffort/podaaaa-11112/x\n")
	write("self", "0::/\n")
	tests := []struct {
		uid  string
		want int
	}{{"aaaa-1111", 10}, {"bbbb-2222", 20}, {"cccc", 0}}
	for _, tt := range tests {
		got, err := findPodProcess(proc, tt.uid)
		if got != tt.want || (tt.want == 0) != (err != nil) {
			t.Errorf("findPodProcess(%s) = %d, %v; want %d", tt.uid, got, err, tt.want)
		}
	}
}
