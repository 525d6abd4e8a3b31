package testutil

import (
	"fmt"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// PrivateBPFFS returns the root of a bpffs mounted in a mount namespace of its own, held by
// a process and reached through /proc/PID/root, so the machine's mounts stay untouched and
// the pins vanish with the test. It needs root; a test that may run without root skips before
// calling it.
func PrivateBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t bpf bpf "$1" && exec sleep infinity`, "sh", dir)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting bpffs holder: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	path := fmt.Sprintf("/proc/%d/root%s", cmd.Process.Pid, dir)
	WaitFor(t, netnsTimeout, "the private bpffs to appear", func() bool {
		var st unix.Statfs_t
		return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	})
	return path
}
