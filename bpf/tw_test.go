package bpf

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// TestTimeWaitReuse: a new connection that reuses the addresses of a captured connection
// still in time-wait in the pod (ztunnel closed first) is captured too, not handed by the
// kernel's time-wait recycling to the app's listener on the original port (8080 here).
func TestTimeWaitReuse(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	r := newRedirector(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	for _, c := range []struct {
		name   string
		from   *netns.Handle
		src    netip.AddrPort
		dst    netip.AddrPort
		want   string
		twPeer string // the time-wait socket's remote address, as ss prints it
	}{
		{"inbound", tp.peer, ap(peerIP, 40404), ap(podIP, appPort), "ztunnel:15006 10.77.0.2:8080", "10.77.0.1:40404"},
		{"outbound", tp.pod, ap(podIP, 40405), ap(remoteIP, appPort), "ztunnel:15001 10.88.0.5:8080", "10.77.0.2:40405"},
	} {
		d := net.Dialer{
			Timeout:   5 * time.Second,
			LocalAddr: net.TCPAddrFromAddrPort(c.src),
			Control: func(network, address string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			},
		}
		for i := range 3 {
			if i > 0 {
				waitTimeWait(t, tp, c.twPeer)
			}
			var conn net.Conn
			err := c.from.Do(func() error {
				var err error
				conn, err = d.DialContext(ctx, "tcp4", c.dst.String())
				return err
			})
			if err != nil {
				t.Fatalf("%s: dial %d: %v", c.name, i, err)
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			// Close only after the server has: the side that closes first holds the
			// time-wait, and it must be the pod's listener.
			io.Copy(io.Discard, br)
			conn.Close()
			if err != nil || !strings.HasPrefix(line, c.want) {
				t.Errorf("%s: connection %d got %q, %v; want %q", c.name, i, line, err, c.want)
			}
		}
	}
}

// waitTimeWait waits until the pod holds a connection with remote address peer in time-wait,
// which the next connection then reuses.
func waitTimeWait(t *testing.T, tp *topo, peer string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []byte
		tp.pod.Do(func() error {
			out, _ = exec.Command("ss", "-Htn", "state", "time-wait", "dst", peer).Output()
			return nil
		})
		if len(strings.TrimSpace(string(out))) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod never held the connection from %s in time-wait", peer)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
