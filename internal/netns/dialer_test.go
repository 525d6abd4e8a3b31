package netns_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// podNS is a namespace set up like a pod's: lo up and eth0 with 10.123.0.1/24 (a veth whose
// peer, up in the same namespace, answers no other address).
func podNS(t testing.TB) *testutil.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	n := testutil.NewNetNS(t, "pod")
	n.Run(t, "ip", "link", "set", "lo", "up")
	n.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	n.Run(t, "ip", "link", "set", "peer0", "up")
	n.Run(t, "ip", "addr", "add", "10.123.0.1/24", "dev", "eth0")
	n.Run(t, "ip", "link", "set", "eth0", "up")
	return n
}

func newDialer(t testing.TB, h *netns.Handle) *netns.Dialer {
	t.Helper()
	d, err := h.NewDialer()
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// serve accepts on ln until it closes, writing each client's address back.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(c.RemoteAddr().String() + "\n"))
		c.Close()
	}
}

func TestDialerConnectsFromNamespace(t *testing.T) {
	testutil.CheckGoroutines(t, 5*time.Second)
	n := podNS(t)
	ln, err := n.Handle.Listen(context.Background(), &net.ListenConfig{}, "tcp", "10.123.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serve(ln)
	d := newDialer(t, n.Handle)

	var marked bool
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String(), netns.DialOptions{
		Control: func(network, address string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				marked = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x539) == nil
			})
		},
		LocalAddr: netip.MustParseAddr("10.123.0.1"),
		KeepAlive: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	defer c.Close()
	if !marked {
		t.Error("Control did not run or could not set SO_MARK")
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is a %T; want *net.TCPConn", c)
	}
	rc, _ := tc.SyscallConn()
	var mark, keepalive int
	rc.Control(func(fd uintptr) {
		mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
		keepalive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	})
	if mark != 0x539 || keepalive != 1 {
		t.Errorf("SO_MARK %#x, SO_KEEPALIVE %d; want 0x539 and 1", mark, keepalive)
	}
	if got := c.RemoteAddr().String(); got != ln.Addr().String() {
		t.Errorf("RemoteAddr %s; want %s", got, ln.Addr())
	}
	line := make([]byte, 64)
	k, err := c.Read(line)
	if err != nil {
		t.Fatalf("reading the server's line: %v", err)
	}
	if got, want := strings.TrimSpace(string(line[:k])), c.LocalAddr().String(); got != want || !strings.HasPrefix(got, "10.123.0.1:") {
		t.Errorf("the server saw the client as %s; want %s, from 10.123.0.1", got, want)
	}
}

func TestDialerUDP(t *testing.T) {
	n := podNS(t)
	var pc net.PacketConn
	if err := n.Handle.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	d := newDialer(t, n.Handle)
	c, err := d.DialContext(context.Background(), "udp", pc.LocalAddr().String(), netns.DialOptions{})
	if err != nil {
		t.Fatalf("dial udp %s: %v", pc.LocalAddr(), err)
	}
	defer c.Close()
	if _, ok := c.(*net.UDPConn); !ok {
		t.Errorf("connection is a %T; want *net.UDPConn", c)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "ping" || from.String() != c.LocalAddr().String() {
		t.Errorf("server read %q from %v (%v); want \"ping\" from %s", buf[:k], from, err, c.LocalAddr())
	}
}

func TestDialerBadInput(t *testing.T) {
	n := podNS(t)
	d := newDialer(t, n.Handle)
	for _, tc := range []struct {
		network, address string
		local            string
		want             string
	}{
		{"sctp", "10.123.0.1:80", "", `network "sctp"`},
		{"tcp", "localhost:80", "", `address "localhost:80" is not an IP address with a port`},
		{"tcp", "10.123.0.1", "", `address "10.123.0.1"`},
		{"tcp4", "[fd00::1]:80", "", "address fd00::1 is not of network tcp4"},
		{"tcp6", "10.123.0.1:80", "", "address 10.123.0.1 is not of network tcp6"},
		{"tcp", "10.123.0.1:80", "fd00::1", "local address fd00::1 and remote address 10.123.0.1 are of different families"},
	} {
		var o netns.DialOptions
		if tc.local != "" {
			o.LocalAddr = netip.MustParseAddr(tc.local)
		}
		c, err := d.DialContext(context.Background(), tc.network, tc.address, o)
		if err == nil {
			c.Close()
			t.Errorf("dial %s %q: no error; want one saying %q", tc.network, tc.address, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dial %s %q: %v; want an error saying %q", tc.network, tc.address, err, tc.want)
		}
	}
}

func TestDialerErrors(t *testing.T) {
	n := podNS(t)
	d := newDialer(t, n.Handle)
	ctx := context.Background()

	// Nobody listens: the kernel's answer, with the address.
	_, err := d.DialContext(ctx, "tcp", "127.0.0.1:1", netns.DialOptions{})
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("dial to a closed port: %v; want connection refused naming 127.0.0.1:1", err)
	}
	// Nobody answers for 10.123.0.2: the handshake does not end before the context does.
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = d.DialContext(tctx, "tcp", "10.123.0.2:80", netns.DialOptions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("dial that cannot complete: %v; want the context's deadline", err)
	}
	// The pod's network goes away (its interface is deleted, as when the sandbox ends): the
	// dial says so instead of hanging.
	n.Run(t, "ip", "link", "del", "eth0")
	_, err = d.DialContext(ctx, "tcp", "10.123.0.2:80", netns.DialOptions{})
	if !errors.Is(err, syscall.ENETUNREACH) || !strings.Contains(err.Error(), "10.123.0.2:80") {
		t.Errorf("dial after the interface went away: %v; want network unreachable naming 10.123.0.2:80", err)
	}
}

// threadsIn counts this process's threads that are inside the namespace at path.
func threadsIn(t *testing.T, path string) int {
	t.Helper()
	want, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	links, _ := filepath.Glob("/proc/self/task/*/ns/net")
	count := 0
	for _, l := range links {
		if got, err := os.Readlink(l); err == nil && got == want {
			count++
		}
	}
	return count
}

func TestDialerCloseReleasesItsThread(t *testing.T) {
	testutil.CheckGoroutines(t, 5*time.Second)
	n := podNS(t)
	d, err := n.Handle.NewDialer()
	if err != nil {
		t.Fatal(err)
	}
	if got := threadsIn(t, n.Path); got != 1 {
		t.Errorf("threads in the namespace while the Dialer runs: %d; want 1", got)
	}
	// The Dialer does not need the Handle once started.
	n.Handle.Close()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := threadsIn(t, n.Path); got != 0 {
		t.Errorf("threads in the namespace after Close: %d; want 0", got)
	}
	if _, err := d.DialContext(context.Background(), "tcp", "127.0.0.1:80", netns.DialOptions{}); !errors.Is(err, netns.ErrDialerClosed) {
		t.Errorf("dial after Close: %v; want ErrDialerClosed", err)
	}
	d.Close() // a second Close is harmless
	// A closed Handle cannot start a Dialer, and says why.
	if _, err := n.Handle.NewDialer(); err == nil || !strings.Contains(err.Error(), "entering network namespace") {
		t.Errorf("NewDialer on a closed Handle: %v; want an error entering the namespace", err)
	}
}

// BenchmarkDial compares a dial through Do (two namespace switches per connection) with a
// Dialer (a socket made by the namespace's own thread), each to a listener in the namespace.
func BenchmarkDial(b *testing.B) {
	n := podNS(b)
	ln, err := n.Handle.Listen(context.Background(), &net.ListenConfig{}, "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go acceptAndClose(ln)
	addr := ln.Addr().String()
	ctx := context.Background()
	// The machine's cores are shared: CPU time (of the whole process, the accepting side
	// included) per dial says more than wall time.
	run := func(b *testing.B, dial func() (net.Conn, error)) {
		b.ReportAllocs()
		before := cpuTime(b)
		for b.Loop() {
			c, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
		b.ReportMetric(float64(cpuTime(b)-before)/float64(b.N), "cpu-ns/op")
	}
	b.Run("setns", func(b *testing.B) {
		run(b, func() (net.Conn, error) { return n.Handle.DialContext(ctx, "tcp", addr) })
	})
	b.Run("dialer", func(b *testing.B) {
		d := newDialer(b, n.Handle)
		run(b, func() (net.Conn, error) { return d.DialContext(ctx, "tcp", addr, netns.DialOptions{}) })
	})
	b.Run("rootns", func(b *testing.B) {
		// The floor: a plain dial with no namespace involved, to a listener of the root netns.
		rln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer rln.Close()
		go acceptAndClose(rln)
		var d net.Dialer
		run(b, func() (net.Conn, error) { return d.DialContext(ctx, "tcp", rln.Addr().String()) })
	})
}

// acceptAndClose accepts until ln closes, closing each connection at once.
func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
