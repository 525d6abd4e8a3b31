package sockopt

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"golang.org/x/sys/unix"
)

// newNetns starts a process holding a fresh network namespace with lo up, and returns a
// Handle to it and its path.
func newNetns(t *testing.T) (*netns.Handle, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	n := testutil.NewNetNS(t, "test")
	h, path := n.Handle, n.Path
	nsexec(t, path, "", "ip", "link", "set", "lo", "up")
	return h, path
}

func nsexec(t *testing.T, path, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + path}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// acceptOne accepts one connection on ln and sends it to the returned channel.
func acceptOne(t *testing.T, ln net.Listener) <-chan *net.TCPConn {
	t.Helper()
	ch := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c.(*net.TCPConn)
	}()
	return ch
}

func TestOriginalDst(t *testing.T) {
	h, path := newNetns(t)
	nsexec(t, path, `
table inet t {
	chain out {
		type nat hook output priority -100;
		tcp dport 80 redirect to :8080
	}
}`, "nft", "-f", "-")
	ctx := context.Background()
	tests := []struct {
		name, listen, dial, want string
	}{
		{"ipv4 redirected", "0.0.0.0:8080", "127.0.0.5:80", "127.0.0.5:80"},
		{"ipv4 direct", "0.0.0.0:8081", "127.0.0.7:8081", "127.0.0.7:8081"},
		{"ipv6 redirected", "[::]:8080", "[::1]:80", "[::1]:80"},
		{"ipv6 direct", "[::]:8082", "[::1]:8082", "[::1]:8082"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			network := "tcp4"
			if strings.HasPrefix(tt.listen, "[") {
				network = "tcp6"
			}
			ln, err := h.Listen(ctx, ListenConfig(), network, tt.listen)
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			defer ln.Close()
			accepted := acceptOne(t, ln)
			c, err := h.DialContext(ctx, network, tt.dial)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			sc := <-accepted
			if sc == nil {
				t.Fatal("accept failed")
			}
			defer sc.Close()
			got, err := OriginalDst(sc)
			if err != nil {
				t.Fatalf("OriginalDst: %v", err)
			}
			if got != netip.MustParseAddrPort(tt.want) {
				t.Errorf("OriginalDst = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestControlSetsMarkAndTransparent(t *testing.T) {
	h, _ := newNetns(t)
	ctx := context.Background()
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := h.Listen(ctx, ListenConfig(), network, addr)
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			defer ln.Close()
			rc, err := ln.(*net.TCPListener).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var mark, transparent int
			var gerr error
			rc.Control(func(fd uintptr) {
				mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
				if gerr != nil {
					return
				}
				if network == "tcp4" {
					transparent, gerr = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT)
				} else {
					transparent, gerr = unix.GetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
				}
			})
			if gerr != nil {
				t.Fatal(gerr)
			}
			if mark != ZtunnelMark || transparent != 1 {
				t.Errorf("mark = %#x, transparent = %d; want %#x, 1", mark, transparent, ZtunnelMark)
			}
		})
	}
}

// TestTransparentBindsNonLocal checks the property inbound delivery relies on: a transparent
// socket can bind to an address the netns does not own.
func TestTransparentBindsNonLocal(t *testing.T) {
	h, _ := newNetns(t)
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := Transparent(fd); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{10, 99, 0, 1}})
	})
	if err != nil {
		t.Errorf("binding a transparent socket to 10.99.0.1: %v", err)
	}
}

func TestControlErrorIsClear(t *testing.T) {
	// A Unix socket has no IP_TRANSPARENT: the error names what failed.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	err = Transparent(fd)
	if err == nil || !strings.Contains(err.Error(), "IP_TRANSPARENT") {
		t.Errorf("Transparent(unix socket) = %v; want an error naming IP_TRANSPARENT", err)
	}
}
