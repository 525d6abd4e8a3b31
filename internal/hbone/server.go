package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// ServerConfig configures a Server. Certificate, Roots, TrustDomain and Handler are required.
type ServerConfig struct {
	// Certificate returns the certificate presented to clients.
	Certificate CertificateFunc
	// Roots returns the trust roots client certificates are verified against.
	Roots RootsFunc
	// TrustDomain is the trust domain every client identity must belong to;
	// others are refused during the TLS handshake.
	TrustDomain string
	// Handler decides each valid CONNECT request.
	Handler Handler
	// RequireLocalAuthority refuses (400) a request whose authority IP is not
	// the outer connection's local (destination) IP.
	RequireLocalAuthority bool
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface. Default 10 s.
	HandshakeTimeout time.Duration
	// MaxConcurrentStreams per connection. Default 1000.
	MaxConcurrentStreams uint32
	// PingInterval and PingTimeout: the server PINGs each connection every
	// interval and closes it when an answer is later than the timeout.
	// Defaults 10 s and 20 s.
	PingInterval, PingTimeout time.Duration
	// Go, if not nil, starts the goroutine that runs a request's Handler (a
	// pool's, say); nil means a new goroutine per request.
	Go func(task func())
}

// Handler is called, in its own goroutine (see ServerConfig.Go), for every CONNECT request that
// passed the library's checks. It must answer with exactly one of
// Request.Accept or Request.Reject; if it returns without answering, the
// request is refused with 503.
type Handler func(*Request)

// Request is one CONNECT request waiting for the handler's decision.
type Request struct {
	// Authority is the parsed :authority (the tunnel's target).
	Authority netip.AddrPort
	// Peer is the client's verified identity.
	Peer identity.Identity
	// Header holds the regular request headers with canonical keys
	// (Forwarded, Traceparent, Baggage, ...).
	Header Header
	// LocalAddr and RemoteAddr are the outer connection's addresses.
	LocalAddr, RemoteAddr net.Addr

	s        *Stream
	mu       sync.Mutex // mu guards answered
	answered bool
}

// ErrAnswered is returned when a request is answered twice.
var ErrAnswered = errors.New("hbone request already answered")

// Accept answers 200 and returns the tunnel. The caller owns the stream and must Close it.
func (r *Request) Accept() (*Stream, error) {
	if err := r.answer(); err != nil {
		return nil, err
	}
	if err := r.s.writeResponse(StatusOK, 0); err != nil {
		r.s.Close()
		return nil, fmt.Errorf("accept stream: %w", err)
	}
	return r.s, nil
}

// Reject answers status (401 when policy denies, 503 when there is no such
// workload or the upstream failed; any 4xx/5xx is sent as given) with msg as
// a text body, and ends the stream.
func (r *Request) Reject(status int, msg string) error {
	if status < 400 || status > 599 {
		return fmt.Errorf("reject request: status %d is not an error status", status)
	}
	if err := r.answer(); err != nil {
		return err
	}
	return r.s.reject(status, msg)
}

func (r *Request) answer() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.answered {
		return ErrAnswered
	}
	r.answered = true
	return nil
}

// writeResponse sends response headers; with body the answer continues with
// DATA, otherwise a non-200 status ends the stream.
func (s *Stream) writeResponse(status int, bodyLen int) error {
	c := s.c
	c.mu.Lock()
	err := s.writeErrLocked()
	c.mu.Unlock()
	if err != nil {
		return err // the client gave up (RST_STREAM) or the connection is gone
	}
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if bodyLen > 0 {
		fields = append(fields,
			hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
			hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(bodyLen)})
	}
	c.lockWrite()
	if err := c.writeHeadersLocked(s.id, fields, status != StatusOK && bodyLen == 0); err != nil {
		c.releaseWrite()
		c.closeWith(fmt.Errorf("write: %w", err))
		return err
	}
	return c.unlockWrite()
}

// reject answers with an error status and msg (at most 1 KiB, sent under
// flow control) and finishes the stream.
func (s *Stream) reject(status int, msg string) error {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	err := s.writeResponse(status, len(msg))
	if err == nil && msg != "" {
		if _, err = s.Write([]byte(msg)); err == nil {
			err = s.CloseWrite()
		}
	}
	c := s.c
	c.mu.Lock()
	s.sentEnd = true
	if !s.recvEnd && s.resetErr == nil && err == nil {
		// Tell the client to stop sending (RFC 9113 section 8.1).
		c.queue(ctlFrame{kind: ctlRST, sid: s.id, val: uint32(h2.ErrCodeNo)})
	}
	s.closed = true
	c.creditConnLocked(int64(s.rb.discard()))
	s.stopTimersLocked()
	c.removeLocked(s)
	s.cond.Broadcast()
	c.mu.Unlock()
	return err
}

// Server serves HBONE on listeners given to Serve.
type Server struct {
	cfg ServerConfig

	mu     sync.Mutex // mu guards the fields below
	lns    map[net.Listener]struct{}
	conns  map[*conn]struct{}
	raw    map[net.Conn]struct{} // connections still in their handshake
	closed bool
	// draining is set by Shutdown: no new connections, and GOAWAY on each one, but the
	// streams a client opened before its GOAWAY are still served.
	draining bool

	wg sync.WaitGroup // connection and handler goroutines
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("hbone server closed")

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.Certificate == nil:
		return nil, errors.New("new hbone server: Certificate is required")
	case cfg.Roots == nil:
		return nil, errors.New("new hbone server: Roots is required")
	case cfg.TrustDomain == "":
		return nil, errors.New("new hbone server: TrustDomain is required")
	case cfg.Handler == nil:
		return nil, errors.New("new hbone server: Handler is required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 1000
	}
	return &Server{cfg: cfg, lns: make(map[net.Listener]struct{}), conns: make(map[*conn]struct{}), raw: make(map[net.Conn]struct{})}, nil
}

// Serve accepts connections on ln until ln fails or the server is closed; it
// then closes ln and returns (ErrServerClosed after Close). Serve may be
// called for several listeners at once, each with its own goroutine.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			stopped := s.closed || s.draining
			s.mu.Unlock()
			if stopped {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff) // retry pacing for a transient accept failure
				continue
			}
			return fmt.Errorf("accept hbone connection: %w", err)
		}
		backoff = 0
		if !s.track(1) {
			nc.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
		}()
	}
}

// track adds n to the goroutine group unless the server is closed.
func (s *Server) track(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(n)
	return true
}

func (s *Server) serveConn(nc net.Conn) {
	s.mu.Lock()
	s.raw[nc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.raw, nc)
		s.mu.Unlock()
	}()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4})
	}
	var peer identity.Identity
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	nc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	rc, err := handshake(ctx, nc, serverTLS(s.cfg.Certificate, s.cfg.Roots, s.cfg.TrustDomain, &peer), false)
	cancel()
	if err != nil {
		return
	}
	c := newConn(rc, false, peer, connConfig{
		pingInterval: s.cfg.PingInterval,
		pingTimeout:  s.cfg.PingTimeout,
		maxStreams:   s.cfg.MaxConcurrentStreams,
	})
	c.rec = rc
	c.srv = s
	// The preface is read under the handshake deadline.
	var preface [len(h2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, preface[:]); err != nil || string(preface[:]) != h2.ClientPreface {
		rc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		rc.Close()
		return
	}
	s.conns[c] = struct{}{}
	draining := s.draining
	s.mu.Unlock()
	if c.start() == nil {
		if draining {
			// Its handshake finished after Shutdown began: the client retries its
			// streams elsewhere.
			c.goAway()
		}
		<-c.done
		c.wait()
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// handleHeaders handles a HEADERS frame.
func (c *conn) handleHeaders(f *frame) error {
	if c.client {
		return c.handleResponse(f)
	}
	sid := f.sid
	c.mu.Lock()
	if s := c.streams[sid]; s != nil {
		// Trailers: only END_STREAM matters.
		if f.has(h2.FlagEndStream) {
			s.recvEnd = true
			s.maybeDoneLocked()
			s.cond.Broadcast()
		}
		c.mu.Unlock()
		return nil
	}
	if sid%2 == 0 || sid <= c.lastPeerID {
		c.mu.Unlock()
		if sid%2 == 0 {
			return connErr{h2.ErrCodeProtocol, "HEADERS on an even stream id"}
		}
		c.queue(ctlFrame{kind: ctlRST, sid: sid, val: uint32(h2.ErrCodeStreamClosed)})
		return nil
	}
	c.lastPeerID = sid
	if c.goaway || uint32(len(c.streams)) >= c.cfg.maxStreams {
		c.mu.Unlock()
		c.queue(ctlFrame{kind: ctlRST, sid: sid, val: uint32(h2.ErrCodeRefusedStream)})
		return nil
	}
	s := newStream(c, sid)
	s.recvEnd = f.has(h2.FlagEndStream)
	c.streams[sid] = s
	c.mu.Unlock()

	local := addrOf(c.nc.LocalAddr())
	ap, hdr, perr := parseRequest(f.fields, local, c.srv.cfg.RequireLocalAuthority)
	req := &Request{Authority: ap, Peer: c.peer, Header: hdr, LocalAddr: c.nc.LocalAddr(), RemoteAddr: c.nc.RemoteAddr(), s: s}
	if !c.srv.track(1) {
		c.resetStream(sid, h2.ErrCodeRefusedStream, ErrServerClosed)
		return nil
	}
	c.srv.goHandle(func() {
		defer c.srv.wg.Done()
		if perr != nil {
			req.answered = true
			s.reject(StatusBadRequest, perr.Error())
			return
		}
		c.srv.cfg.Handler(req)
		if req.answer() == nil {
			s.reject(StatusServiceUnavailable, "hbone handler did not answer")
		}
	})
	return nil
}

// goHandle runs task as ServerConfig.Go says.
func (s *Server) goHandle(task func()) {
	if s.cfg.Go != nil {
		s.cfg.Go(task)
		return
	}
	go task()
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// Shutdown stops accepting, sends GOAWAY on every connection so clients open
// no new streams, and waits until the open streams have finished or ctx ends;
// then it closes what is left like Close. Streams a client opened before it
// read the GOAWAY (those up to the GOAWAY's last stream id) are still served;
// it retries the later ones on another connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.lns {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Each GOAWAY waits for its connection's writer: one stuck peer must not hold back the
	// others'.
	var sent sync.WaitGroup
	for _, c := range conns {
		sent.Go(c.goAway)
	}
	var err error
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
	}
	s.Close()
	sent.Wait()
	return err
}

// Close stops every Serve loop, closes all connections (their streams fail
// with ErrConnClosed) and waits for connection and handler goroutines to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for nc := range s.raw {
		nc.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown(h2.ErrCodeNo, ErrServerClosed)
	}
	s.wg.Wait()
	return nil
}
