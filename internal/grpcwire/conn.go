package grpcwire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
)

// DefaultMaxRecvSize is the largest message a call accepts unless Options say otherwise; it is
// grpc-go's default.
const DefaultMaxRecvSize = 4 << 20

// Options configure a Conn.
type Options struct {
	// TLS, when set, makes the connection TLS with ALPN h2, verified as this config says (its
	// RootCAs and ServerName). Nil: plaintext HTTP/2 with prior knowledge (h2c).
	TLS *tls.Config
	// Dial opens the TCP connection (nil: a net.Dialer). Tests use it to count or break
	// connections.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// UserAgent is sent as user-agent (default "ambit-grpcwire").
	UserAgent string
	// MaxRecvSize bounds a received message (default DefaultMaxRecvSize).
	MaxRecvSize int
}

// Conn calls methods of one server. It opens its HTTP/2 connection on the first call and
// opens another when that one fails; calls may run concurrently. Close it when done.
type Conn struct {
	address string
	base    string // scheme://address
	opts    Options
	rt      http.RoundTripper
	closeRT func()

	// mu guards the fields below.
	mu     sync.Mutex
	conns  map[net.Conn]struct{} // TCP connections open, closed by Close
	closed bool
}

// ErrClosed is returned by calls on a closed Conn.
var ErrClosed = errors.New("grpcwire: connection closed")

// New returns a Conn to address (host:port). It does not connect.
func New(address string, o Options) (*Conn, error) {
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, fmt.Errorf("grpc address %q: %w", address, err)
	}
	if o.UserAgent == "" {
		o.UserAgent = "ambit-grpcwire"
	}
	if o.MaxRecvSize <= 0 {
		o.MaxRecvSize = DefaultMaxRecvSize
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	c := &Conn{address: address, opts: o, conns: map[net.Conn]struct{}{}}
	scheme := "http://"
	if o.TLS != nil {
		scheme = "https://"
	}
	c.base = scheme + address
	c.rt, c.closeRT = newTransport(o.TLS, c.dial)
	return c, nil
}

// dial opens a TCP connection and tracks it until it is closed, so that Close ends every
// connection even one whose last stream is still being torn down.
func (c *Conn) dial(ctx context.Context, network, address string) (net.Conn, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	nc, err := c.opts.Dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		nc.Close()
		return nil, ErrClosed
	}
	tc := &trackedConn{Conn: nc, c: c}
	c.conns[tc] = struct{}{}
	return tc, nil
}

type trackedConn struct {
	net.Conn
	c    *Conn
	once sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.c.mu.Lock()
		delete(t.c.conns, t)
		t.c.mu.Unlock()
	})
	return t.Conn.Close()
}

// Close closes every connection; calls still running fail. Streams should be ended (their
// contexts cancelled) first.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	conns := make([]net.Conn, 0, len(c.conns))
	for nc := range c.conns {
		conns = append(conns, nc)
	}
	c.mu.Unlock()
	c.closeRT()
	for _, nc := range conns {
		nc.Close()
	}
	return nil
}

// Metadata are request headers sent with a call (gRPC's custom metadata), such as
// "authorization": "Bearer ...". Keys are sent lowercased.
type Metadata map[string]string

// reserved reports whether key is a header the protocol itself sets.
func reserved(key string) bool {
	switch key {
	case "content-type", "te", "user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "host", "connection":
		return true
	}
	return key == "" || key[0] == ':'
}

func (c *Conn) header(method string, md Metadata) (http.Header, error) {
	h := http.Header{
		"Content-Type": {"application/grpc"},
		"Te":           {"trailers"},
		"User-Agent":   {c.opts.UserAgent},
	}
	for k, v := range md {
		lk := strings.ToLower(k)
		if reserved(lk) {
			return nil, &Error{Method: method, Code: Internal, Message: fmt.Sprintf("metadata key %q is set by the protocol", k)}
		}
		h[http.CanonicalHeaderKey(lk)] = []string{v}
	}
	return h, nil
}
