package grpcwire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// DefaultMaxRecvSize is the largest message a call accepts unless Options say otherwise; it is
// grpc-go's default.
const DefaultMaxRecvSize = 4 << 20

// DefaultConnectTimeout bounds a connection attempt unless Options say otherwise. Without a
// bound, an attempt that kube-proxy sent to a Service endpoint that had just gone (its pod
// deleted, the SYN unanswered) waited for the kernel's own give-up, over a minute, with a call
// (an xDS stream) waiting behind it; the next attempt picks a live endpoint.
const DefaultConnectTimeout = 10 * time.Second

// Options configure a Conn.
type Options struct {
	// TLS, when set, makes the connection TLS with ALPN h2, verified as this config says (its
	// RootCAs and ServerName). Nil: plaintext HTTP/2 with prior knowledge (h2c).
	TLS *tls.Config
	// Dial opens the TCP connection (nil: a net.Dialer whose TCP keepalive notices a server
	// gone silent, one whose machine or pod vanished without closing, within 25 s). Tests
	// use it to count or break connections.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// ConnectTimeout bounds one connection attempt: TCP, TLS and HTTP/2 preface (default
	// DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// UserAgent is sent as user-agent (default "ambit-grpcwire").
	UserAgent string
	// MaxRecvSize bounds a received message (default DefaultMaxRecvSize).
	MaxRecvSize int
}

// Conn calls methods of one server. It opens its HTTP/2 connection on the first call and
// opens another when that one fails or the server sends GOAWAY; calls may run concurrently,
// and share the connection. Close it when done.
type Conn struct {
	address string
	scheme  string
	opts    Options

	// mu guards the fields below.
	mu      sync.Mutex
	cur     *transport              // the connection new calls use, if any
	dialing chan struct{}           // closed when the dial in progress ends; nil if none
	all     map[*transport]struct{} // connections open, closed by Close
	closed  bool
}

// ErrClosed is returned by calls on a closed Conn.
var ErrClosed = errors.New("grpcwire: connection closed")

// New returns a Conn to address (host:port). It does not connect.
func New(address string, o Options) (*Conn, error) {
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, fmt.Errorf("grpc address %q: %w", address, err)
	}
	if !validValue(address) {
		return nil, fmt.Errorf("grpc address %q: not a valid :authority", address)
	}
	if o.UserAgent == "" {
		o.UserAgent = "ambit-grpcwire"
	}
	if !validValue(o.UserAgent) {
		return nil, fmt.Errorf("user agent %q: control characters are not allowed in a header value", o.UserAgent)
	}
	if o.MaxRecvSize <= 0 {
		o.MaxRecvSize = DefaultMaxRecvSize
	}
	if o.Dial == nil {
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3}}
		o.Dial = d.DialContext
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	return &Conn{address: address, scheme: scheme, opts: o, all: map[*transport]struct{}{}}, nil
}

// transport returns the connection for a new call, dialing one if there is none that takes
// new streams. Concurrent calls wait for one dial.
func (c *Conn) transport(ctx context.Context) (*transport, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if t := c.cur; t != nil && t.usable() {
			c.mu.Unlock()
			return t, nil
		}
		if ch := c.dialing; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		c.dialing = ch
		c.mu.Unlock()
		t, err := c.connect(ctx)
		c.mu.Lock()
		c.dialing = nil
		close(ch)
		if err == nil && c.closed {
			err = ErrClosed
		} else if err == nil {
			c.cur = t
			c.all[t] = struct{}{}
		}
		c.mu.Unlock()
		if err != nil {
			if t != nil {
				t.close(err)
			}
			return nil, err
		}
		return t, nil
	}
}

// connect dials the server and starts HTTP/2 on the connection: after a TLS handshake that
// must agree on h2 (ALPN), or at once (h2c with prior knowledge).
func (c *Conn) connect(ctx context.Context) (*transport, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
	defer cancel()
	nc, err := c.opts.Dial(ctx, "tcp", c.address)
	if err != nil {
		return nil, err
	}
	if c.opts.TLS != nil {
		conf := c.opts.TLS.Clone()
		conf.NextProtos = []string{"h2"}
		if conf.ServerName == "" {
			conf.ServerName, _, _ = net.SplitHostPort(c.address)
		}
		tc := tls.Client(nc, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			tc.Close()
			return nil, fmt.Errorf("the server negotiated the application protocol %q (ALPN), not h2: it does not serve HTTP/2 on this port", p)
		}
		nc = tc
	}
	t := newTransport(nc, c.forget)
	if err := t.start(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return t, nil
}

// forget drops a connection that has closed.
func (c *Conn) forget(t *transport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.all, t)
	if c.cur == t {
		c.cur = nil
	}
}

// Close closes every connection; calls still running fail. Streams should be ended (their
// contexts cancelled) first.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	all := make([]*transport, 0, len(c.all))
	for t := range c.all {
		all = append(all, t)
	}
	c.mu.Unlock()
	for _, t := range all {
		t.close(ErrClosed)
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

// header returns the request's header fields.
func (c *Conn) header(method string, md Metadata) ([]hpack.HeaderField, error) {
	h := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: c.scheme},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: c.address},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "user-agent", Value: c.opts.UserAgent},
		{Name: "te", Value: "trailers"},
	}
	for k, v := range md {
		lk := strings.ToLower(k)
		if reserved(lk) {
			return nil, &Error{Method: method, Code: Internal, Message: fmt.Sprintf("metadata key %q is set by the protocol", k)}
		}
		if !validName(lk) || !validValue(v) {
			return nil, &Error{Method: method, Code: Internal, Message: fmt.Sprintf("metadata %q: %q: not a valid header field (a name of letters, digits and !#$%%&'*+-.^_`|~; a value without control characters)", k, v)}
		}
		h = append(h, hpack.HeaderField{Name: lk, Value: v, Sensitive: lk == "authorization"})
	}
	return h, nil
}

// validName reports whether name is a header field name (an RFC 9110 token, lowercase).
func validName(name string) bool {
	for i := 0; i < len(name); i++ {
		b := name[i]
		lower, digit := 'a' <= b && b <= 'z', '0' <= b && b <= '9'
		if !lower && !digit && strings.IndexByte("!#$%&'*+-.^_`|~", b) < 0 {
			return false
		}
	}
	return name != ""
}

// validValue reports whether v may be sent as a header field value: no control characters but
// tab.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}
