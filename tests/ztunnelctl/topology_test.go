package ztunnelctl

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// newTestNS makes a network namespace, with lo up, that the test removes when it ends.
func newTestNS(t *testing.T, name string) *testutil.NetNS {
	t.Helper()
	n := testutil.NewNetNS(t, name)
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// lan is a bridge in its own namespace with hosts attached, like the pods of one node.
type lan struct {
	sw *testutil.NetNS
}

func newLAN(t *testing.T) *lan {
	sw := newTestNS(t, "switch")
	sw.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	sw.Run(t, "ip", "link", "set", "br0", "up")
	return &lan{sw: sw}
}

// attach plugs a host into the bridge with address cidr on its eth0, and routes the service
// range through it.
func (l *lan) attach(t *testing.T, h *testutil.NetNS, port, cidr string) {
	t.Helper()
	l.sw.Run(t, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", fmt.Sprint(h.PID))
	l.sw.Run(t, "ip", "link", "set", port, "master", "br0", "up")
	h.Run(t, "ip", "addr", "add", cidr, "dev", "eth0")
	h.Run(t, "ip", "link", "set", "eth0", "up")
	h.Run(t, "ip", "route", "add", "10.96.0.0/16", "dev", "eth0")
}

// sniffer records every frame crossing the bridge.
type sniffer struct {
	fd   int
	mu   sync.Mutex
	seen bytes.Buffer
	// ports counts TCP segments by destination port.
	ports map[uint16]int
	done  chan struct{}
}

// sniff captures on the bridge's ports with an AF_PACKET socket made inside the switch
// namespace.
func (l *lan) sniff(t *testing.T) *sniffer {
	t.Helper()
	s := &sniffer{ports: map[uint16]int{}, done: make(chan struct{})}
	err := l.sw.Handle.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		// Every interface of the switch: frames bridged between two ports never pass br0 itself.
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL)}); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.Timeval{Usec: 100000}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		s.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("capturing in the switch namespace: %v", err)
	}
	stop := make(chan struct{})
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(s.fd, buf, 0)
			if err != nil || n < 14+20 {
				continue
			}
			s.record(buf[:n])
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-s.done
		unix.Close(s.fd)
	})
	return s
}

func (s *sniffer) record(frame []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen.Write(frame)
	ip := frame[14:]
	if frame[12] != 0x08 || frame[13] != 0x00 || ip[9] != unix.IPPROTO_TCP {
		return
	}
	ihl := int(ip[0]&0x0f) * 4
	if len(ip) >= ihl+4 {
		s.ports[uint16(ip[ihl+2])<<8|uint16(ip[ihl+3])]++
	}
}

func (s *sniffer) contains(b []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.seen.Bytes(), b)
}

func (s *sniffer) segmentsTo(port uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ports[port]
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// echoApp serves on 0.0.0.0:port inside h: it first writes the client address it saw, then
// echoes every line.
func echoApp(t *testing.T, h *testutil.NetNS, port int) {
	t.Helper()
	var ln net.Listener
	err := h.Handle.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("echo app in %s: %v", h.Name, err)
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
				fmt.Fprintf(c, "from %s\n", c.RemoteAddr())
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// appConn is a client connection made by "the app" inside a pod: a socket without ztunnel's
// mark, so capture takes it.
type appConn struct {
	net.Conn
	r *bufio.Reader
	// from is the client address the server reported.
	from string
}

func dialApp(ctx context.Context, h *testutil.NetNS, addr string) (*appConn, error) {
	c, err := h.Handle.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	ac := &appConn{Conn: c, r: bufio.NewReader(c)}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	line, err := ac.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the server's greeting: %w", err)
	}
	ac.from = strings.TrimSpace(strings.TrimPrefix(line, "from "))
	return ac, nil
}

// roundTrip sends one line and reads it back.
func (c *appConn) roundTrip(line string) error {
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echo: got %q, want %q", got, line)
	}
	return nil
}
