package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Addresses of the test topology: a pod netns and a peer netns joined by a veth pair. The peer
// stands for the rest of the cluster: it holds a remote service, a DNS server address and the
// kubelet probe address.
var (
	podIP      = netip.MustParseAddr("10.77.0.2")
	peerIP     = netip.MustParseAddr("10.77.0.1")
	remoteIP   = netip.MustParseAddr("10.88.0.5")  // a service outside the pod
	dnsIP      = netip.MustParseAddr("10.88.0.53") // the cluster's DNS server
	spoofedIP  = netip.MustParseAddr("10.99.0.7")  // a client ztunnel impersonates
	probeIP    = netip.MustParseAddr("169.254.7.127")
	appPort    = uint16(8080)
	remotePort = uint16(80)
)

// topo is one test's namespaces.
type topo struct {
	pod, peer         *netns.Handle
	podPath, peerPath string
}

// holders are the test namespaces, by path.
var holders sync.Map

// killHolder ends the process holding the namespace at path, so the namespace dies.
func killHolder(t testing.TB, path string) {
	t.Helper()
	if n, ok := holders.Load(path); ok {
		n.(*testutil.NetNS).Kill()
	}
}

// pinDir returns a directory on a bpffs private to the test: mounted in a mount namespace
// of its own, held by a process, and reached through /proc/PID/root, so the machine's mounts
// are untouched and the pins vanish with the test.
func pinDir(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to mount a bpffs and load eBPF (CI runs as root)")
	}
	return filepath.Join(testutil.PrivateBPFFS(t), "ambit")
}

// newNetNS starts a process holding a fresh network namespace and returns a path to it.
func newNetNS(t testing.TB) (*netns.Handle, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces and load eBPF (CI runs as root)")
	}
	n := testutil.NewNetNS(t, "test")
	holders.Store(n.Path, n)
	return n.Handle, n.Path
}

// run runs a command inside h (a child forked from a thread in the namespace stays in it).
func run(t testing.TB, h *netns.Handle, args ...string) {
	t.Helper()
	err := h.Do(func() error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	tp := &topo{}
	tp.pod, tp.podPath = newNetNS(t)
	tp.peer, tp.peerPath = newNetNS(t)
	run(t, tp.pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", tp.peerPath)
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "addr", "add", podIP.String() + "/24", "dev", "eth0"},
		{"ip", "route", "add", "default", "via", peerIP.String()},
	} {
		run(t, tp.pod, c...)
	}
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "addr", "add", peerIP.String() + "/24", "dev", "eth0"},
		{"ip", "addr", "add", remoteIP.String() + "/32", "dev", "lo"},
		{"ip", "addr", "add", dnsIP.String() + "/32", "dev", "lo"},
		{"ip", "addr", "add", probeIP.String() + "/32", "dev", "lo"},
	} {
		run(t, tp.peer, c...)
	}
	return tp
}

// serve accepts on ln until it closes, writing "<name> <local> <remote>\n" to each connection.
// ztunnel's listeners report the original destination instead of the local address.
func serve(t testing.TB, ln net.Listener, name string) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			local := c.LocalAddr().String()
			if tc, ok := c.(*net.TCPConn); ok && strings.HasPrefix(name, "ztunnel") {
				if dst, err := sockopt.OriginalDst(tc); err == nil {
					local = dst.String()
				}
			}
			fmt.Fprintf(c, "%s %s %s\n", name, local, c.RemoteAddr())
			c.Close()
		}
	}()
}

func listen(t testing.TB, h *netns.Handle, lc *net.ListenConfig, addr, name string) {
	t.Helper()
	ln, err := h.Listen(context.Background(), lc, "tcp4", addr)
	if err != nil {
		t.Fatalf("listen %s in netns: %v", addr, err)
	}
	serve(t, ln, name)
}

// startZtunnel opens the contract's listeners in the pod netns: TCP 15001, 15006, 15008,
// 15053 and UDP 15053 (answering "dns <query>"), marked and transparent.
func startZtunnel(t testing.TB, tp *topo) {
	t.Helper()
	lc := sockopt.ListenConfig()
	for _, p := range []string{"15001", "15006", "15008", "15053"} {
		listen(t, tp.pod, lc, "0.0.0.0:"+p, "ztunnel:"+p)
	}
	var pc net.PacketConn
	err := tp.pod.Do(func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:15053")
		return err
	})
	if err != nil {
		t.Fatalf("listen udp 15053: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("dns "), buf[:n]...), from)
		}
	}()
}

// startApps starts the app in the pod (0.0.0.0:8080) and the remote services on the peer.
func startApps(t testing.TB, tp *topo) {
	t.Helper()
	listen(t, tp.pod, &net.ListenConfig{}, fmt.Sprintf("0.0.0.0:%d", appPort), "app")
	listen(t, tp.peer, &net.ListenConfig{}, fmt.Sprintf("0.0.0.0:%d", remotePort), "remote")
	listen(t, tp.peer, &net.ListenConfig{}, "0.0.0.0:53", "dns-server-tcp")
	var pc net.PacketConn
	err := tp.peer.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(dnsIP, 53).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen udp 53: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("dns-server "), buf[:n]...), from)
		}
	}()
}

// dialOpts says how a test client's socket is made.
type dialOpts struct {
	mark        bool       // SO_MARK 0x539, as ztunnel's sockets
	transparent bool       // IP_TRANSPARENT
	bind        netip.Addr // local address (port 0)
}

// hello dials dst from inside h and returns the first line the server sends.
func hello(h *netns.Handle, dst netip.AddrPort, o dialOpts) (string, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	if o.bind.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: o.bind.AsSlice()}
	}
	d.Control = func(network, address string, c syscall.RawConn) error {
		var opErr error
		err := c.Control(func(fd uintptr) {
			if o.mark {
				if opErr = sockopt.Mark(int(fd), sockopt.ZtunnelMark); opErr != nil {
					return
				}
			}
			if o.transparent {
				opErr = sockopt.Transparent(int(fd))
			}
		})
		return errors.Join(err, opErr)
	}
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = d.Dial("tcp4", dst.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// query sends a UDP datagram to dst from a connected socket in h and returns the answer.
func query(h *netns.Handle, dst netip.AddrPort, msg string) (string, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = net.Dial("udp4", dst.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// echo serves on addr inside h, copying back what each connection sends.
func echo(t testing.TB, h *netns.Handle, addr string) {
	t.Helper()
	ln, err := h.Listen(context.Background(), &net.ListenConfig{}, "tcp4", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// roundTrip sends msg on c and reads it back.
func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo returned %q, want %q", buf, msg)
	}
	return nil
}
