package bpf

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTimeWaitReuse: a new connection that reuses the 4-tuple of a captured connection still
// in TIME_WAIT in the pod (ztunnel closed first) is captured too, not handed to the app's
// listener by the kernel's TIME_WAIT recycling.
func TestTimeWaitReuse(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	r := newRedirector(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	d := net.Dialer{
		Timeout:   5 * time.Second,
		LocalAddr: &net.TCPAddr{IP: peerIP.AsSlice(), Port: 40404},
		Control: func(network, address string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		},
	}
	for i := range 3 {
		var c net.Conn
		start := time.Now()
		err := tp.peer.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, "tcp4", ap(podIP, appPort).String())
			return err
		})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if want := "ztunnel:15006 10.77.0.2:8080"; err != nil || !strings.HasPrefix(line, want) {
			t.Errorf("connection %d (after %v) got %q, %v; want %q", i, time.Since(start), line, err, want)
		}
	}
}
