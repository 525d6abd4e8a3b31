package redirecttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Addresses of the test topology: the pod and its peer share a /24 over a veth pair; the
// peer also owns the probe source address, and ClientIP is a remote client that ztunnel
// impersonates for spoofed inbound delivery.
const (
	PodIP    = "10.77.0.2"
	PeerIP   = "10.77.0.1"
	ClientIP = "10.77.5.5"
	AppPort  = 8080 // the pod's app listens here on all addresses
	PeerPort = 80   // the peer's server
	PodLink  = "eth0"
)

// ns is a network namespace held open by a sleeping process.
type ns struct {
	path string
	h    *netns.Handle
}

// newNS makes a network namespace that the test removes when it ends.
func newNS(t testing.TB) *ns {
	t.Helper()
	n := testutil.NewNetNS(t, "redirecttest")
	return &ns{path: n.Path, h: n.Handle}
}

// run runs a command inside the namespace and returns its combined output.
func (n *ns) run(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.path}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (n *ns) mustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// env is one pod netns and its peer.
type env struct {
	pod, peer *ns
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the redirection contract test needs root (CI runs as root)")
	}
	e := &env{pod: newNS(t), peer: newNS(t)}
	peerPid := strings.TrimSuffix(strings.TrimPrefix(e.peer.path, "/proc/"), "/ns/net")
	e.pod.mustRun(t, "ip", "link", "add", PodLink, "type", "veth", "peer", "name", "peer0", "netns", peerPid)
	// No IPv6 link-local addresses: they appear when DAD ends, which would make the
	// before/after snapshots differ.
	e.pod.mustRun(t, "ip", "link", "set", PodLink, "addrgenmode", "none")
	e.peer.mustRun(t, "ip", "link", "set", "peer0", "addrgenmode", "none")
	e.pod.mustRun(t, "ip", "link", "set", "lo", "up")
	e.pod.mustRun(t, "ip", "link", "set", PodLink, "up")
	e.pod.mustRun(t, "ip", "addr", "add", PodIP+"/24", "dev", PodLink)
	e.pod.mustRun(t, "ip", "route", "add", "default", "via", PeerIP)
	e.peer.mustRun(t, "ip", "link", "set", "lo", "up")
	e.peer.mustRun(t, "ip", "link", "set", "peer0", "up")
	e.peer.mustRun(t, "ip", "addr", "add", PeerIP+"/24", "dev", "peer0")
	e.peer.mustRun(t, "ip", "addr", "add", "169.254.7.127/32", "dev", "peer0")
	return e
}

// podRun runs a bash script as a process of the pod, inside its netns.
func (e *env) podRun(ctx context.Context, script string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+e.pod.path, "timeout", "5", "bash", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pod script %q: %w: %s", script, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// podTCP connects from a pod process to addr and returns the first line the server sends.
func (e *env) podTCP(ctx context.Context, host string, port int) (string, error) {
	return e.podRun(ctx, fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d && read -r line <&3 && echo "$line"`, host, port))
}

// podUDP sends a datagram from a pod process to addr and returns the reply. (bash's read
// builtin reads one byte at a time, which would discard the rest of the datagram; head reads
// it whole.)
func (e *env) podUDP(ctx context.Context, host string, port int) (string, error) {
	return e.podRun(ctx, fmt.Sprintf(`exec 3<>/dev/udp/%s/%d && echo q >&3 && head -n1 <&3`, host, port))
}
