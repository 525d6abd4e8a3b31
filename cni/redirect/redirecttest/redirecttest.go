// Package redirecttest is the contract test every redirect.Backend passes: it builds a
// throwaway pod network namespace joined to a peer namespace by a veth pair, starts a fake
// ztunnel with the contract's listeners inside the pod, enrols the pod and checks every
// point of the data-plane contract with real traffic, then unenrols it and checks that direct
// traffic works again and nothing is left behind. Import it from _test.go files only.
//
// Pod-side client traffic comes from separate processes (bash /dev/tcp and /dev/udp) running
// in the pod's netns; ztunnel's own sockets come from the test process.
package redirecttest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
)

// Run runs the contract test against the backend newBackend returns. newBackend is called
// once per Run; it may skip the test (t.Skip) when the backend cannot work here.
func Run(t *testing.T, newBackend func(t *testing.T) redirect.Backend) {
	e := newEnv(t)
	startServers(t, e)
	b := newBackend(t)
	ctx := context.Background()
	pod := redirect.Pod{
		UID: "uid-redirecttest", Namespace: "ns", Name: "pod",
		Netns: e.pod.path,
		IPs:   []netip.Addr{netip.MustParseAddr(PodIP)},
	}

	checkDirect(t, e, "before Enroll")
	before := snapshot(t, e)

	for i := range 2 { // the second run checks that Enroll is idempotent
		if err := b.Enroll(ctx, pod); err != nil {
			t.Fatalf("%s: Enroll (run %d): %v", b.Name(), i+1, err)
		}
	}

	want := func(t *testing.T, got string, err error, want string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", b.Name(), err)
		}
		if !strings.HasPrefix(got, want) {
			t.Errorf("%s: got %q, want %q", b.Name(), got, want)
		}
	}
	peer := fmt.Sprintf("%s:%d", PeerIP, PeerPort)
	app := fmt.Sprintf("%s:%d", PodIP, AppPort)

	t.Run("outbound TCP reaches 15001 with the original destination", func(t *testing.T) {
		got, err := e.podTCP(ctx, PeerIP, PeerPort)
		want(t, got, err, "15001 "+peer)
		got, err = e.podTCP(ctx, PeerIP, 9)
		want(t, got, err, "15001 "+PeerIP+":9")
	})
	t.Run("inbound TCP reaches 15006 with the original destination", func(t *testing.T) {
		got, err := dialLine(ctx, e.peer.h, &net.Dialer{}, app)
		want(t, got, err, "15006 "+app)
		got, err = dialLine(ctx, e.peer.h, &net.Dialer{}, PodIP+":9999")
		want(t, got, err, "15006 "+PodIP+":9999")
	})
	t.Run("inbound 15008 reaches 15008", func(t *testing.T) {
		got, err := dialLine(ctx, e.peer.h, &net.Dialer{}, PodIP+":15008")
		want(t, got, err, "15008 "+PodIP+":15008")
	})
	t.Run("DNS reaches 15053", func(t *testing.T) {
		got, err := e.podUDP(ctx, PeerIP, 53)
		want(t, got, err, "15053 udp")
		got, err = e.podTCP(ctx, PeerIP, 53)
		want(t, got, err, "15053 ")
	})
	t.Run("ztunnel's marked sockets bypass", func(t *testing.T) {
		marked := &net.Dialer{Control: sockopt.Control}
		got, err := dialLine(ctx, e.pod.h, marked, peer)
		want(t, got, err, "peer "+PodIP+":")
		got, err = udpLine(ctx, e.pod.h, marked, PeerIP+":53")
		want(t, got, err, "peerdns udp")
	})
	t.Run("spoofed inbound delivery gets its replies", func(t *testing.T) {
		spoof := &net.Dialer{Control: sockopt.Control, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ClientIP)}}
		got, err := dialLine(ctx, e.pod.h, spoof, app)
		want(t, got, err, "app "+ClientIP+":")
	})
	t.Run("probes from 169.254.7.127 bypass", func(t *testing.T) {
		probe := &net.Dialer{LocalAddr: &net.TCPAddr{IP: redirect.ProbeSource.AsSlice()}}
		got, err := dialLine(ctx, e.peer.h, probe, app)
		want(t, got, err, "app "+redirect.ProbeSource.String()+":")
	})
	t.Run("loopback is not captured", func(t *testing.T) {
		got, err := e.podTCP(ctx, "127.0.0.1", AppPort)
		want(t, got, err, "app 127.0.0.1:")
	})

	for i := range 2 { // the second run checks that Unenroll of nothing is fine
		if err := b.Unenroll(ctx, pod); err != nil {
			t.Fatalf("%s: Unenroll (run %d): %v", b.Name(), i+1, err)
		}
	}
	checkDirect(t, e, "after Unenroll")
	if after := snapshot(t, e); after != before {
		t.Errorf("%s: Unenroll left state behind in the pod netns:\nbefore:\n%s\nafter:\n%s", b.Name(), before, after)
	}
}

// checkDirect checks that nothing is captured.
func checkDirect(t *testing.T, e *env, when string) {
	t.Helper()
	ctx := context.Background()
	check := func(what, got string, err error, want string) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %s: %v", when, what, err)
		} else if !strings.HasPrefix(got, want) {
			t.Errorf("%s: %s: got %q, want %q", when, what, got, want)
		}
	}
	got, err := e.podTCP(ctx, PeerIP, PeerPort)
	check("outbound TCP", got, err, "peer "+PodIP+":")
	got, err = dialLine(ctx, e.peer.h, &net.Dialer{}, fmt.Sprintf("%s:%d", PodIP, AppPort))
	check("inbound TCP", got, err, "app "+PeerIP+":")
	got, err = e.podUDP(ctx, PeerIP, 53)
	check("DNS over UDP", got, err, "peerdns udp")
}

// dialLine dials addr from inside h with d and returns the first line the server sends.
func dialLine(ctx context.Context, h *netns.Handle, d *net.Dialer, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// udpLine sends one datagram to addr from inside h with d and returns the reply.
func udpLine(ctx context.Context, h *netns.Handle, d *net.Dialer, addr string) (string, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "udp4", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dialing udp %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("q\n")); err != nil {
		return "", fmt.Errorf("sending to udp %s: %w", addr, err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("reading from udp %s: %w", addr, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}
