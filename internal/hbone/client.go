package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// StatusError is returned by Pool.Dial when the server answered the CONNECT
// request with a status other than 200.
type StatusError struct {
	Code    int    // the HTTP status, e.g. 401 or 503
	Message string // the response body, at most 1 KiB
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("hbone: server answered %d %s", e.Code, StatusText(e.Code))
	}
	return fmt.Sprintf("hbone: server answered %d %s: %s", e.Code, StatusText(e.Code), e.Message)
}

// Source is the client side of a tunnel: the workload it speaks for.
type Source struct {
	// Identity is the source workload's identity; it keys the pool.
	Identity identity.Identity
	// Certificate returns the client certificate to present.
	Certificate CertificateFunc
	// Roots returns the trust roots server certificates are verified against.
	Roots RootsFunc
	// DialContext makes the outer TCP connection (for ztunnel: inside the
	// source pod's netns, with SO_MARK). Nil means a net.Dialer.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
}

// Target is one tunnel to open.
type Target struct {
	// Address is dialled: podIP:15008 or a waypoint.
	Address netip.AddrPort
	// Authority is sent as :authority (podIP:port, or serviceVIP:port via a waypoint).
	Authority netip.AddrPort
	// Identities are the acceptable server identities; the server leaf's URI
	// SAN must be one of them.
	Identities []identity.Identity
	// Header holds extra request headers (forwarded, traceparent, baggage, ...).
	Header Header
}

// PoolConfig configures a Pool. The zero value is usable.
type PoolConfig struct {
	// MaxStreamsPerConn caps open streams per connection (also capped by the
	// server's SETTINGS_MAX_CONCURRENT_STREAMS). Default 100.
	MaxStreamsPerConn int
	// IdleTimeout releases a connection without streams after this long. Default 5 min.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds dialling plus the TLS handshake. Default 10 s.
	HandshakeTimeout time.Duration
	// PingInterval and PingTimeout as in ServerConfig. Defaults 10 s and 20 s.
	PingInterval, PingTimeout time.Duration
}

// Pool dials HBONE streams and shares connections between them. Connections
// are keyed by {source identity, expected destination identities, destination
// address}; a connection carries up to MaxStreamsPerConn streams, more open
// another connection. Connections that fail or receive GOAWAY are dropped.
type Pool struct {
	cfg PoolConfig

	mu      sync.Mutex // mu guards the fields below
	conns   map[string][]*conn
	dialing map[string]chan struct{} // closed when the dial for a key ends
	closed  bool
}

// NewPool returns a Pool.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	return &Pool{cfg: cfg, conns: make(map[string][]*conn), dialing: make(map[string]chan struct{})}
}

// ErrPoolClosed is returned by Dial after Close.
var ErrPoolClosed = errors.New("hbone pool closed")

func poolKey(src *Source, t *Target) string {
	ids := make([]string, len(t.Identities))
	for i, id := range t.Identities {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	return src.Identity.String() + "|" + strings.Join(ids, ",") + "|" + t.Address.String()
}

// Dial opens a tunnel to t on behalf of src. It returns the stream once the
// server answered 200; any other answer is a *StatusError.
func (p *Pool) Dial(ctx context.Context, src *Source, t Target) (*Stream, error) {
	if len(t.Identities) == 0 {
		return nil, fmt.Errorf("dial hbone %s: no expected server identities", t.Address)
	}
	key := poolKey(src, &t)
	for attempt := 0; ; attempt++ {
		c, err := p.get(ctx, key, src, &t)
		if err != nil {
			return nil, err
		}
		s, err := c.open(ctx, &t)
		if errors.Is(err, errGoAway) && attempt < 3 {
			continue // the connection went away before our stream started
		}
		if err != nil {
			return nil, fmt.Errorf("dial hbone %s (authority %s): %w", t.Address, t.Authority, err)
		}
		return s, nil
	}
}

// get returns a connection with a stream slot reserved. Only one dial per key
// is in flight: concurrent callers wait for it rather than each opening a
// connection.
func (p *Pool) get(ctx context.Context, key string, src *Source, t *Target) (*conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		for _, c := range p.conns[key] {
			if c.reserve(p.cfg.MaxStreamsPerConn) {
				p.mu.Unlock()
				return c, nil
			}
		}
		if wait, ok := p.dialing[key]; ok {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("dial hbone %s: %w", t.Address, ctx.Err())
			}
		}
		done := make(chan struct{})
		p.dialing[key] = done
		p.mu.Unlock()

		c, err := p.dial(ctx, key, src, t)
		p.mu.Lock()
		delete(p.dialing, key)
		p.mu.Unlock()
		close(done)
		if err != nil {
			return nil, fmt.Errorf("dial hbone %s: %w", t.Address, err)
		}
		return c, nil
	}
}

func (p *Pool) dial(ctx context.Context, key string, src *Source, t *Target) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	dial := src.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, "tcp", t.Address.String())
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4})
	}
	var peer identity.Identity
	rc, err := handshake(ctx, nc, clientTLS(src.Certificate, src.Roots, t.Identities, &peer), true)
	if err != nil {
		return nil, err
	}
	c := newConn(rc, true, peer, connConfig{
		pingInterval: p.cfg.PingInterval,
		pingTimeout:  p.cfg.PingTimeout,
		idleTimeout:  p.cfg.IdleTimeout,
		onClose:      func(c *conn) { p.remove(key, c) },
	})
	c.rec = rc
	c.reserved = 1
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		rc.Close()
		return nil, ErrPoolClosed
	}
	p.conns[key] = append(p.conns[key], c)
	p.mu.Unlock()
	if err := c.start(); err != nil {
		return nil, err
	}
	return c, nil
}

func (p *Pool) remove(key string, c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[key]
	if i := slices.Index(list, c); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(p.conns, key)
	} else {
		p.conns[key] = list
	}
}

// Close closes every connection (their streams fail) and refuses new dials.
// It waits for the connections' goroutines to stop.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var all []*conn
	for _, list := range p.conns {
		all = append(all, list...)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.shutdown(h2.ErrCodeNo, ErrPoolClosed)
	}
	for _, c := range all {
		c.wait()
	}
	return nil
}

// conns returns the number of pooled connections (for tests and metrics).
func (p *Pool) numConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, list := range p.conns {
		n += len(list)
	}
	return n
}

// reserve takes a stream slot if the connection has room.
func (c *conn) reserve(maxStreams int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.goaway {
		return false
	}
	limit := min(maxStreams, int(c.peerMaxStr))
	if len(c.streams)+c.reserved >= limit {
		return false
	}
	c.reserved++
	return true
}

const maxMessage = 1 << 10

// open starts a CONNECT stream on a reserved slot and waits for the answer.
func (c *conn) open(ctx context.Context, t *Target) (*Stream, error) {
	fields := make([]hpack.HeaderField, 0, 2+len(t.Header))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: "CONNECT"},
		hpack.HeaderField{Name: ":authority", Value: t.Authority.String()})
	for k, vs := range t.Header {
		k = strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: k, Value: v})
		}
	}

	c.lockWrite()
	c.mu.Lock()
	c.reserved--
	if c.err != nil || c.goaway || c.nextID >= 1<<31 {
		c.goaway = true
		c.mu.Unlock()
		c.releaseWrite()
		return nil, errGoAway
	}
	s := newStream(c, c.nextID)
	c.nextID += 2
	c.streams[s.id] = s
	c.mu.Unlock()
	if err := c.writeHeadersLocked(s.id, fields, false); err != nil {
		c.releaseWrite()
		c.closeWith(fmt.Errorf("write: %w", err))
		return nil, err
	}
	if err := c.unlockWrite(); err != nil {
		return nil, err
	}

	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		s.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	for !s.headersDone {
		var err error
		switch {
		case s.resetErr != nil:
			err = s.resetErr
		case c.err != nil:
			err = fmt.Errorf("%w: %w", ErrConnClosed, c.err)
		case ctx.Err() != nil:
			err = ctx.Err()
		}
		if err != nil {
			c.mu.Unlock()
			s.Close()
			return nil, err
		}
		s.cond.Wait()
	}
	status := s.status
	c.mu.Unlock()
	if status == StatusOK {
		return s, nil
	}
	// Collect the message body, bounded in size and by ctx.
	var buf [maxMessage]byte
	n := 0
	c.mu.Lock()
	for n < maxMessage && ctx.Err() == nil {
		if s.rb.n > 0 {
			m := s.rb.read(buf[n:])
			s.creditLocked(int64(m))
			n += m
			continue
		}
		if s.recvEnd || s.resetErr != nil || c.err != nil {
			break
		}
		s.cond.Wait()
	}
	c.mu.Unlock()
	s.Close()
	return nil, &StatusError{Code: status, Message: string(buf[:n])}
}

// handleResponse handles HEADERS on the client.
func (c *conn) handleResponse(f *frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.sid]
	if s == nil {
		if c.idleStreamLocked(f.sid) {
			return connErr{h2.ErrCodeProtocol, "HEADERS on a stream we did not open"}
		}
		return nil
	}
	if !s.headersDone {
		code, err := strconv.Atoi(f.pseudo("status"))
		if err != nil || code < 100 || code > 999 {
			s.resetLocked(fmt.Errorf("bad response :status %q", f.pseudo("status")))
			c.queue(ctlFrame{kind: ctlRST, sid: s.id, val: uint32(h2.ErrCodeProtocol)})
			return nil
		}
		if code < 200 {
			return nil // interim response
		}
		s.status, s.headersDone = code, true
	}
	if f.has(h2.FlagEndStream) {
		s.recvEnd = true
		s.maybeDoneLocked()
	}
	s.cond.Broadcast()
	return nil
}
