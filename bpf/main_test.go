package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// helperEnv makes the test binary, run by TestAttachOutlivesProcess, attach and exit.
const helperEnv = "AMBIT_BPF_TEST_ATTACH" // "<pin dir>|<netns path>"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		pinDir, netnsPath, _ := strings.Cut(v, "|")
		r, err := New(Options{PinDir: pinDir})
		if err == nil {
			err = r.Attach(context.Background(), netnsPath, []netip.Addr{podIP})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestAttachOutlivesProcess: what one process attaches keeps capturing after it exits, and
// another process (the restarted agent) finds it, reconciles it unchanged and removes it.
func TestAttachOutlivesProcess(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	r := newRedirector(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+r.pinDir+"|"+tp.podPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("attaching from a child process: %v\n%s", err, out)
	}
	t.Run("captured after the attaching process exited", func(t *testing.T) { runChecks(t, tp, captured) })
	before, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	after, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("reconciling another process's install changed it:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Fatal(err)
	}
	if left, _ := r.Installed(ctx, tp.podPath); len(left) != 0 {
		t.Errorf("after Detach, left behind:\n%s", strings.Join(left, "\n"))
	}
	runChecks(t, tp, direct)
}
