package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (namespaces, cgroups); CI runs as root")
	}
}

// TestSandboxLifecycle starts a sandbox, runs a program in it and checks that destroying the
// cgroup tree kills everything and removes every cgroup it made.
func TestSandboxLifecycle(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	name := fmt.Sprintf("ambit-test-%d", os.Getpid())
	cg, err := newCgroupTree(name)
	if err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cg.destroy(10 * time.Second)
		}
	})
	sb, err := startSandbox(ctx, "m1", cg, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A program started in the sandbox is in its network namespace and its cgroup.
	out, err := sb.command("sh", "-c", "readlink /proc/self/ns/net; cat /proc/self/cgroup").Output()
	if err != nil {
		t.Fatalf("running in sandbox: %v", err)
	}
	own, _ := os.Readlink("/proc/self/ns/net")
	lines := strings.SplitN(string(out), "\n", 2)
	if lines[0] == own {
		t.Errorf("program in sandbox shares the test's network namespace %s", own)
	}
	if !strings.Contains(lines[1], "/"+name+"/m1") {
		t.Errorf("program in sandbox is in cgroups\n%s\nwant %s/m1 in each", lines[1], name)
	}
	// A long-lived program that the sandbox spawned must die with the tree.
	bg := sb.command("sleep", "300")
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- bg.Wait() }()
	// The shell prologue moves itself into the cgroup a moment after it starts.
	err = poll(ctx, 10*time.Second, func() (bool, error) { return len(cg.pids()) >= 2, nil })
	if err != nil {
		t.Fatalf("cgroup tree has pids %v; want the holder and sleep: %v", cg.pids(), err)
	}
	sb.ns.Close()
	if err := cg.destroy(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	destroyed = true
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Errorf("sleep %d did not exit after the cgroup tree was destroyed", bg.Process.Pid)
	}
	for _, d := range append(cg.dirs(""), cg.created...) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s survived destroy", d)
		}
	}
	if p := cg.pids(); len(p) != 0 {
		t.Errorf("processes %v survived destroy", p)
	}
}
