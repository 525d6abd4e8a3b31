package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/cni/redirect/redirecttest"
)

func TestEBPFContract(t *testing.T) {
	redirecttest.Run(t, func(t *testing.T) redirect.Backend {
		dir := privateBPFFS(t)
		b, err := redirect.NewEBPFAt(dir)
		if errors.Is(err, redirect.ErrNotSupported) {
			t.Skipf("skipping: %v", err)
		}
		if err != nil {
			t.Fatalf("NewEBPFAt: %v", err)
		}
		r, err := bpf.New(bpf.Options{PinDir: dir})
		if err != nil {
			t.Fatalf("bpf.New: %v", err)
		}
		return &leftoverCheck{Backend: b, t: t, r: r}
	})
}

// leftoverCheck adds to the contract test's snapshot what only package bpf can list (the
// programs on lo and the src_valid_mark sysctls): after each Unenroll nothing may be left.
type leftoverCheck struct {
	redirect.Backend
	t *testing.T
	r *bpf.Redirector
}

func (l *leftoverCheck) Unenroll(ctx context.Context, p redirect.Pod) error {
	if err := l.Backend.Unenroll(ctx, p); err != nil {
		return err
	}
	left, err := l.r.Installed(ctx, p.Netns)
	if err != nil {
		l.t.Errorf("listing what is left after Unenroll: %v", err)
	} else if len(left) > 0 {
		l.t.Errorf("after Unenroll, left in the pod netns:\n%s", strings.Join(left, "\n"))
	}
	return nil
}

// privateBPFFS returns a directory on a bpffs mounted in a mount namespace of its own (held
// by a process, reached through /proc/PID/root), so the machine's mounts stay untouched and
// the pins vanish with the test.
func privateBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t bpf bpf "$1" && exec sleep infinity`, "sh", dir)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting bpffs holder: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	path := fmt.Sprintf("/proc/%d/root%s", cmd.Process.Pid, dir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st unix.Statfs_t
		if unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
			return filepath.Join(path, "ambit")
		}
		if time.Now().After(deadline) {
			t.Fatal("the private bpffs never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
