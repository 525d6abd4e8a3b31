package testutil

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// netnsTimeout bounds the wait for a namespace holder to enter its namespace (it takes
// milliseconds; the bound only matters on a machine that is very busy).
const netnsTimeout = 30 * time.Second

// NetNS is a throwaway network namespace, held open by an `unshare --net sleep infinity`
// process. Its loopback is down, as in any fresh namespace.
type NetNS struct {
	Name   string        // for messages
	Path   string        // /proc/PID/ns/net
	PID    int           // the holder process; "netns PID" in ip(8) commands
	Handle *netns.Handle // open on Path

	cmd  *exec.Cmd
	kill sync.Once
}

// NewNetNS makes a network namespace and waits until its holder process sits in it. The
// namespace is removed (handle closed, holder killed) when the test ends. It needs root; a
// test that may run without root skips before calling it.
func NewNetNS(t testing.TB, name string) *NetNS {
	t.Helper()
	// The holder says "ready" once it is inside its new namespace, then becomes sleep. (Its
	// namespace cannot be told apart by comparing with ours: the caller's thread may itself
	// be inside another namespace, which the child starts in.)
	cmd := exec.Command("unshare", "--net", "sh", "-c", "echo ready && exec sleep infinity")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("starting the %s namespace holder: %v", name, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the %s namespace holder (unshare from util-linux, as root): %v", name, err)
	}
	n := &NetNS{Name: name, PID: cmd.Process.Pid, Path: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), cmd: cmd}
	t.Cleanup(n.Kill)
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("it printed %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("the %s namespace holder did not enter its network namespace: %v", name, err)
		}
	case <-time.After(netnsTimeout):
		t.Fatalf("the %s namespace holder did not enter its network namespace within %s", name, netnsTimeout)
	}
	if n.Handle, err = netns.Open(n.Path); err != nil {
		t.Fatalf("opening the %s namespace: %v", name, err)
	}
	t.Cleanup(func() { n.Handle.Close() })
	return n
}

// Kill ends the holder process, so that the namespace dies once nothing else holds it (the
// Handle does: close it first). It is safe to call more than once; the test's cleanup calls it.
func (n *NetNS) Kill() {
	n.kill.Do(func() {
		n.cmd.Process.Kill()
		n.cmd.Wait()
	})
}

// Run runs a command inside the namespace through nsenter and returns its combined output. It
// fails the test if the command fails.
func (n *NetNS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
