package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// maxMsg is the largest DNS message over TCP (and the largest UDP datagram).
const maxMsg = 65535

// serveUDP reads queries until pc is closed, handling each on its own goroutine under the
// in-flight bound.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn, wg *sync.WaitGroup) error {
	uc, _ := pc.(*net.UDPConn)
	if uc != nil && !enablePktinfo(uc) {
		uc = nil
	}
	buf := make([]byte, maxMsg)
	oob := make([]byte, 256)
	for {
		var (
			n    int
			from net.Addr
			dst  netip.Addr // where the query was sent, when the socket reports it
			err  error
		)
		if uc != nil {
			var oobn int
			var ap netip.AddrPort
			n, oobn, _, ap, err = uc.ReadMsgUDPAddrPort(buf, oob)
			from = net.UDPAddrFromAddrPort(ap)
			if err == nil {
				dst = packetDst(oob[:oobn])
			}
		} else {
			n, from, err = pc.ReadFrom(buf)
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !s.acquire() {
			continue
		}
		req := make([]byte, n)
		copy(req, buf[:n])
		wg.Go(func() {
			defer s.release()
			qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
			defer cancel()
			if resp := s.handle(qctx, req, false); resp != nil {
				writeUDP(pc, uc, resp, from, dst)
			}
		})
	}
}

// writeUDP sends resp to the client from the address its query was sent to, if known. A failed
// write to one client is that client's problem, not the server's, so errors are dropped.
func writeUDP(pc net.PacketConn, uc *net.UDPConn, resp []byte, to net.Addr, src netip.Addr) {
	if uc != nil && src.IsValid() {
		if ua, ok := to.(*net.UDPAddr); ok {
			if _, _, err := uc.WriteMsgUDPAddrPort(resp, sourceOOB(src), ua.AddrPort()); err == nil {
				return
			}
		}
	}
	_, _ = pc.WriteTo(resp, to)
}

// serveTCP accepts connections until ln is closed, serving at most MaxTCPConns at once.
func (s *Server) serveTCP(ctx context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) && !errors.Is(err, syscall.ECONNABORTED) {
				return err
			}
			// Out of descriptors, or a client gave up during the handshake: the listener
			// itself is fine, so back off and keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		select {
		case s.tcpConns <- struct{}{}:
		default:
			s.dropped.Add(1)
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-s.tcpConns }()
			s.serveConn(ctx, c)
		})
	}
}

// serveConn answers the queries of one TCP connection in order (RFC 7766 framing: a two-byte
// length before each message) until the client closes it, it idles out, or ctx ends.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, 2+maxMsg)
	for {
		if err := c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout)); err != nil {
			return
		}
		req, err := readFramed(c, buf)
		if err != nil || len(req) == 0 {
			return
		}
		select {
		case s.inFlight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
		resp := s.handle(qctx, req, true)
		cancel()
		s.release()
		if resp == nil {
			return
		}
		if err := c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout)); err != nil {
			return
		}
		if err := writeFramed(c, resp); err != nil {
			return
		}
	}
}

// readFramed reads one length-prefixed message into buf (at least 2+maxMsg bytes long).
func readFramed(r io.Reader, buf []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(buf[:2]))
	if _, err := io.ReadFull(r, buf[2:2+n]); err != nil {
		return nil, err
	}
	return buf[2 : 2+n], nil
}

// writeFramed writes msg with its two-byte length in one write.
func writeFramed(w io.Writer, msg []byte) error {
	if len(msg) > maxMsg {
		return errors.New("dns message longer than 65535 bytes")
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	_, err := w.Write(b)
	return err
}
