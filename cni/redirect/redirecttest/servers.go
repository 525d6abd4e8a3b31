package redirecttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/ipv4"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
)

// servers are every listener of the test: a fake ztunnel and an app in the pod netns, a
// plain server on the peer. Each TCP server writes one line naming itself and what it saw,
// then closes; UDP servers answer each datagram with one line.
type servers struct {
	wg      sync.WaitGroup
	closers []func() error
}

func (s *servers) close() {
	for _, c := range s.closers {
		c()
	}
	s.wg.Wait()
}

// tcp serves on addr inside h; line computes the answer for an accepted connection.
func (s *servers) tcp(t *testing.T, h *netns.Handle, lc *net.ListenConfig, addr string, line func(c *net.TCPConn) string) {
	t.Helper()
	ln, err := h.Listen(context.Background(), lc, "tcp4", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	s.closers = append(s.closers, ln.Close)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			fmt.Fprintln(tc, line(tc))
			tc.Close()
		}
	}()
}

// udp answers every datagram on addr inside h with answer, from the address the datagram
// was sent to (IP_PKTINFO), as a DNS server on a wildcard address must.
func (s *servers) udp(t *testing.T, h *netns.Handle, lc *net.ListenConfig, addr, answer string) {
	t.Helper()
	var pc net.PacketConn
	err := h.Do(func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), "udp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listening on udp %s: %v", addr, err)
	}
	p := ipv4.NewPacketConn(pc)
	if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
		t.Fatalf("asking for IP_PKTINFO on %s: %v", addr, err)
	}
	s.closers = append(s.closers, pc.Close)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			_, cm, from, err := p.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			var reply *ipv4.ControlMessage
			if cm != nil {
				reply = &ipv4.ControlMessage{Src: cm.Dst}
			}
			p.WriteTo([]byte(answer+"\n"), reply, from)
		}
	}()
}

// startServers starts the fake ztunnel (per the data-plane contract: wildcard listeners
// with SO_MARK 0x539 and IP_TRANSPARENT, MPTCP off) and the app inside the pod, and the
// peer's servers.
func startServers(t *testing.T, e *env) *servers {
	s := &servers{}
	zt := sockopt.ListenConfig()
	for _, port := range []int{15001, 15006, 15008, 15053} {
		s.tcp(t, e.pod.h, zt, fmt.Sprintf("0.0.0.0:%d", port), func(c *net.TCPConn) string {
			dst, err := sockopt.OriginalDst(c)
			if err != nil {
				return fmt.Sprintf("%d error %v", port, err)
			}
			return fmt.Sprintf("%d %s", port, dst)
		})
	}
	s.udp(t, e.pod.h, zt, "0.0.0.0:15053", "15053 udp")
	plain := &net.ListenConfig{}
	s.tcp(t, e.pod.h, plain, fmt.Sprintf("0.0.0.0:%d", AppPort), func(c *net.TCPConn) string {
		return "app " + c.RemoteAddr().String()
	})
	s.tcp(t, e.peer.h, plain, fmt.Sprintf("%s:%d", PeerIP, PeerPort), func(c *net.TCPConn) string {
		return "peer " + c.RemoteAddr().String()
	})
	s.tcp(t, e.peer.h, plain, PeerIP+":53", func(c *net.TCPConn) string { return "peerdns tcp" })
	s.udp(t, e.peer.h, plain, PeerIP+":53", "peerdns udp")
	t.Cleanup(s.close)
	return s
}
