package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestListenerHandoff is what the sysctl is for: two listeners share a port with
// SO_REUSEPORT, as an old and a new ztunnel do during a rolling update; connections queue on
// both, unaccepted, then the first listener closes. With the handoff set, the second accepts
// every one of them; without it, the kernel resets those queued on the first.
func TestListenerHandoff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	for _, on := range []bool{true, false} {
		name := map[bool]string{true: "on", false: "off"}[on]
		t.Run(name, func(t *testing.T) {
			ns := testutil.NewNetNS(t, "pod")
			ns.Run(t, "ip", "link", "set", "lo", "up")
			if err := setListenerHandoff(ns.Path, on); err != nil {
				t.Fatal(err)
			}
			if got := readMigrateReq(t, ns.Path); got != map[bool]string{true: "1", false: "0"}[on] {
				t.Fatalf("tcp_migrate_req in the pod netns = %s after setting it %s", got, name)
			}
			const conns = 20
			accepted := queueAndCloseOne(t, ns.Handle, conns)
			if on && accepted != conns {
				t.Errorf("the remaining listener accepted %d of %d queued connections; want all", accepted, conns)
			}
			if !on && accepted == conns {
				t.Errorf("without the handoff the remaining listener still accepted all %d connections: the test no longer shows what the sysctl does", conns)
			}
		})
	}
}

// queueAndCloseOne opens two listeners as ztunnel's (SO_REUSEPORT) on one port in h, queues n connections
// without accepting, closes the first listener and returns how many of the n the second
// accepts and can exchange a byte over.
func queueAndCloseOne(t *testing.T, h *netns.Handle, n int) int {
	t.Helper()
	ctx := context.Background()
	// ztunnel's own listener options: SO_REUSEPORT among them.
	lc := sockopt.ListenConfig()
	first, err := h.Listen(ctx, lc, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := h.Listen(ctx, lc, "tcp", first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range n {
		c, err := h.DialContext(ctx, "tcp", first.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	// Each client sends its index, so the test sees which connections arrived.
	for i, c := range clients {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	first.Close()

	accepted := 0
	second.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	for accepted < n {
		s, err := second.Accept()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		if _, err := s.Read(b); err != nil || int(b[0]) >= n {
			t.Errorf("reading a client's index on an accepted connection: %v, %v", b, err)
		} else if _, err := s.Write(b); err != nil {
			t.Errorf("answering client %d: %v", b[0], err)
		} else {
			c := clients[b[0]]
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(b); err != nil {
				t.Errorf("client %d reading the answer: %v", b[0], err)
			} else {
				accepted++
			}
		}
		s.Close()
	}
	return accepted
}

// readMigrateReq returns net.ipv4.tcp_migrate_req in the netns at path.
func readMigrateReq(t *testing.T, path string) string {
	t.Helper()
	h, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var v []byte
	if err := h.Do(func() (err error) { v, err = os.ReadFile(migrateReqPath); return err }); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}
