package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// run runs a command and fails t with its output if it fails.
func run(t *testing.T, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestRedirectedQueries runs the proxy the way ztunnel does, on the wildcard address inside a
// pod-like network namespace whose DNS traffic an nftables rule redirects to 15053 (the
// nftables backend's rule), and queries the cluster DNS Service IP from an app socket in that
// namespace. The answers must come back as if from 10.96.0.10:53, and names the proxy does not
// know must reach the real cluster DNS through the proxy's marked sockets (no redirect loop).
func TestRedirectedQueries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	name := fmt.Sprintf("ambit-dns-test-%d", os.Getpid())
	run(t, "", "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "", "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "", "ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
	run(t, "", "ip", "-n", name, "link", "set", "eth0-peer", "up")
	run(t, "", "ip", "-n", name, "addr", "add", "10.244.1.5/24", "dev", "eth0")
	run(t, "", "ip", "-n", name, "link", "set", "eth0", "up")
	run(t, "", "ip", "-n", name, "route", "add", "default", "via", "10.244.1.1")
	run(t, `table ip ambit_dns_test {
	chain output {
		type nat hook output priority -100;
		meta mark 0x539 return
		udp dport 53 redirect to :15053
		tcp dport 53 redirect to :15053
	}
}
`, "ip", "netns", "exec", name, "nft", "-f", "-")

	h, err := netns.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var pc net.PacketConn
	if err := h.Do(func() error {
		var lc net.ListenConfig
		pc, err = lc.ListenPacket(ctx, "udp4", "0.0.0.0:15053")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := h.Listen(ctx, &lc, "tcp4", "0.0.0.0:15053")
	if err != nil {
		t.Fatal(err)
	}
	// The cluster DNS lives at 10.96.0.10:53 inside the namespace: the app's queries to it are
	// redirected to the proxy, while the proxy's own, marked, upstream queries reach it.
	run(t, "", "ip", "-n", name, "addr", "add", "10.96.0.10/32", "dev", "lo")
	var upc net.PacketConn
	if err := h.Do(func() error {
		var lc net.ListenConfig
		upc, err = lc.ListenPacket(ctx, "udp4", "10.96.0.10:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	uln, err := h.Listen(ctx, &net.ListenConfig{}, "tcp4", "10.96.0.10:53")
	if err != nil {
		t.Fatal(err)
	}
	up := serveUpstream(t, upc, uln, false)
	// The upstream queries go out as ztunnel's do: from a netns.Dialer, with ztunnel's mark.
	marked := netns.DialOptions{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x539) })
		return errors.Join(err, serr)
	}}
	dialer, err := h.NewDialer()
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	s, err := New(Config{
		Resolver:  testResolver,
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr, marked)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	tests := []struct {
		network, name string
		want          []string
	}{
		{"udp", "reviews.default.svc.cluster.local.", []string{"10.96.0.10"}},
		{"tcp", "reviews.default.svc.cluster.local.", []string{"10.96.0.10"}},
		{"udp", "example.com.", []string{"93.184.216.34"}},
		{"tcp", "example.com.", []string{"93.184.216.34"}},
		{"tcp", "big.example.com.", bigAnswers()},
	}
	for _, tt := range tests {
		network := tt.network
		t.Run(network+" "+tt.name, func(t *testing.T) {
			c, err := h.DialContext(ctx, network, "10.96.0.10:53")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			req := q{name: tt.name, typ: dnsmessage.TypeA, id: 77}.pack(t)
			var resp []byte
			if network == "tcp" {
				if err := writeFramed(c, req); err != nil {
					t.Fatal(err)
				}
				resp, err = readFramed(c, make([]byte, 2+maxMsg))
			} else {
				if _, err := c.Write(req); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, maxMsg)
				var n int
				n, err = c.Read(buf)
				resp = buf[:n]
			}
			if err != nil {
				t.Fatalf("reading the answer from 10.96.0.10:53: %v", err)
			}
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatal(err)
			}
			if got := answers(m); m.ID != 77 || !slices.Equal(got, tt.want) {
				t.Errorf("answer: got id %d %v, want id 77 %v", m.ID, got, tt.want)
			}
		})
	}
	if up.queries.Load() == 0 || up.tcp.Load() == 0 {
		t.Errorf("cluster DNS saw %d udp queries and %d tcp connections, want both > 0", up.queries.Load(), up.tcp.Load())
	}
}
