package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/identity"
)

func TestRoundTrip(t *testing.T) {
	got := make(chan *Request, 1)
	e := newEnv(t, func(r *Request) {
		got <- r
		echo(r)
	})
	tgt := e.target(8080)
	tgt.Header = Header{"Forwarded": {`for="10.0.0.1:1234"`}, "Traceparent": {"00-abc-def-01"}}
	s, err := e.pool.Dial(context.Background(), e.src, tgt)
	if err != nil {
		t.Fatal(err)
	}
	req := <-got
	if req.Authority != tgt.Authority {
		t.Errorf("authority: got %v, want %v", req.Authority, tgt.Authority)
	}
	if req.Peer.String() != clientID {
		t.Errorf("peer: got %v, want %s", req.Peer, clientID)
	}
	if got, want := req.Header.Get("forwarded"), `for="10.0.0.1:1234"`; got != want {
		t.Errorf("forwarded: got %q, want %q", got, want)
	}
	if got, want := req.Header.Get("traceparent"), "00-abc-def-01"; got != want {
		t.Errorf("traceparent: got %q, want %q", got, want)
	}
	if req.LocalAddr.String() != e.addr.String() {
		t.Errorf("local addr: got %v, want %v", req.LocalAddr, e.addr)
	}
	if s.Peer().String() != serverID {
		t.Errorf("server identity: got %v, want %s", s.Peer(), serverID)
	}
	for _, msg := range []string{"hello", "world", strings.Repeat("x", 100000)} {
		if _, err := s.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatal(err)
		}
		if string(buf) != msg {
			t.Fatalf("echo: got %d bytes %.20q, want %.20q", len(buf), buf, msg)
		}
	}
	s.CloseWrite()
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("read after echo end: got %d, %v; want 0, EOF", n, err)
	}
	s.Close()
	e.close()
	checkNoLeaks(t)
}

func TestHalfClose(t *testing.T) {
	// Server half-closes first: sends a greeting, CloseWrite, then reads until EOF.
	serverRead := make(chan string, 1)
	e := newEnv(t, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		s.Write([]byte("greeting"))
		s.CloseWrite()
		if _, err := s.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
			t.Errorf("write after CloseWrite: got %v, want ErrWriteClosed", err)
		}
		b, _ := io.ReadAll(s)
		serverRead <- string(b)
	})
	s := e.dial(t, 80)
	defer s.Close()
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "greeting" {
		t.Fatalf("client read: got %q, %v; want greeting, nil", b, err)
	}
	// Our side still writes after the server's half-close.
	s.Write([]byte("after "))
	s.Write([]byte("your close"))
	s.CloseWrite()
	if got := <-serverRead; got != "after your close" {
		t.Errorf("server read: got %q, want %q", got, "after your close")
	}
}

// TestBigTransfer sends 256 MiB each way at once, much more than the windows,
// and checks every byte.
func TestBigTransfer(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 32 << 20
	}
	e := newEnv(t, echo)
	s := e.dial(t, 80)
	defer s.Close()
	src := newPattern(size)
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(s, src)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, s)
	if err != nil {
		t.Fatalf("read: %v after %d bytes", err, n)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != size {
		t.Fatalf("got %d bytes, want %d", n, size)
	}
	if got, want := h.Sum(nil), newPattern(size).sum(); !bytes.Equal(got, want) {
		t.Fatalf("content differs: sha256 %x, want %x", got, want)
	}
}

// pattern is a deterministic, non-repeating-at-frame-size byte source.
type pattern struct {
	left  int64
	block []byte
	off   int
}

func newPattern(n int64) *pattern {
	b := make([]byte, 1<<20+7) // odd length: never aligned with frames
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return &pattern{left: n, block: b}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n := 0
	for n < len(b) {
		m := copy(b[n:], p.block[p.off:])
		n += m
		p.off = (p.off + m) % len(p.block)
	}
	p.left -= int64(n)
	return n, nil
}

func (p *pattern) sum() []byte {
	h := sha256.New()
	io.Copy(h, p)
	return h.Sum(nil)
}

func TestConcurrentStreams(t *testing.T) {
	e := newEnv(t, echo)
	const streams = 50
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.pool.Dial(context.Background(), e.src, e.target(80))
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 1<<20+i)
			go func() {
				s.Write(msg)
				s.CloseWrite()
			}()
			got, err := io.ReadAll(s)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: got %d bytes, want %d", i, len(got), len(msg))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.pool.numConns(); n != 1 {
		t.Errorf("connections: got %d, want 1", n)
	}
}

func TestPooling(t *testing.T) {
	release := make(chan struct{})
	e := newEnv(t, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		<-release
		s.Close()
	}, func(_ *ServerConfig, p *PoolConfig) { p.IdleTimeout = 200 * time.Millisecond })
	var streams []*Stream
	for range 100 {
		streams = append(streams, e.dial(t, 80))
	}
	if n := e.pool.numConns(); n != 1 {
		t.Fatalf("after 100 streams: got %d connections, want 1", n)
	}
	streams = append(streams, e.dial(t, 80))
	if n := e.pool.numConns(); n != 2 {
		t.Fatalf("after 101 streams: got %d connections, want 2", n)
	}
	if streams[0].c == streams[100].c {
		t.Fatal("101st stream shares the first connection")
	}
	// A different expected identity set is a different pool key.
	other := e.target(80)
	other.Identities = append(other.Identities, mustID(t, "spiffe://cluster.local/ns/x/sa/y"))
	s, err := e.pool.Dial(context.Background(), e.src, other)
	if err != nil {
		t.Fatal(err)
	}
	streams = append(streams, s)
	if n := e.pool.numConns(); n != 3 {
		t.Fatalf("other identity set: got %d connections, want 3", n)
	}
	close(release)
	for _, s := range streams {
		s.Close()
	}
	waitFor(t, "idle connections released", func() bool { return e.pool.numConns() == 0 })
	// Still works afterwards, on a new connection.
	e.dial(t, 80).Close()
}

func TestStatuses(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		switch r.Authority.Port() {
		case 401:
			r.Reject(StatusUnauthorized, "denied by policy ns/deny-all")
		case 503:
			r.Reject(StatusServiceUnavailable, "no workload 127.0.0.1")
		case 504:
			// no answer: the library answers 503
		default:
			echo(r)
		}
	}, func(c *ServerConfig, _ *PoolConfig) { c.RequireLocalAuthority = true })
	tests := []struct {
		name      string
		authority netip.AddrPort
		code      int
		msg       string
	}{
		{"policy", netip.MustParseAddrPort("127.0.0.1:401"), 401, "denied by policy ns/deny-all"},
		{"no workload", netip.MustParseAddrPort("127.0.0.1:503"), 503, "no workload 127.0.0.1"},
		{"unanswered", netip.MustParseAddrPort("127.0.0.1:504"), 503, "did not answer"},
		{"loop 15001", netip.MustParseAddrPort("127.0.0.1:15001"), 400, "port 15001"},
		{"loop 15006", netip.MustParseAddrPort("127.0.0.1:15006"), 400, "port 15006"},
		{"loop 15008", netip.MustParseAddrPort("127.0.0.1:15008"), 400, "port 15008"},
		{"not local", netip.MustParseAddrPort("10.1.2.3:80"), 400, "not this connection's destination"},
		{"no authority", netip.AddrPort{}, 400, "not ip:port"},
	}
	for _, tt := range tests {
		tgt := e.target(80)
		tgt.Authority = tt.authority
		_, err := e.pool.Dial(context.Background(), e.src, tgt)
		var se *StatusError
		if !errors.As(err, &se) {
			t.Errorf("%s: got %v, want a StatusError", tt.name, err)
			continue
		}
		if se.Code != tt.code || !strings.Contains(se.Message, tt.msg) {
			t.Errorf("%s: got %d %q, want %d containing %q", tt.name, se.Code, se.Message, tt.code, tt.msg)
		}
	}
	// All on one connection, which still works.
	s := e.dial(t, 80)
	s.Write([]byte("ok"))
	s.CloseWrite()
	if b, _ := io.ReadAll(s); string(b) != "ok" {
		t.Errorf("after rejections: got %q, want ok", b)
	}
	if n := e.pool.numConns(); n != 1 {
		t.Errorf("connections: got %d, want 1", n)
	}
}

func TestForeignTrustDomainRefused(t *testing.T) {
	called := make(chan struct{}, 1)
	e := newEnv(t, func(r *Request) { called <- struct{}{}; echo(r) })
	foreign := e.ca.issue(t, "spiffe://other.domain/ns/client/sa/cli")
	src := *e.src
	src.Certificate = func() (*tls.Certificate, error) { return foreign, nil }
	_, err := e.pool.Dial(context.Background(), &src, e.target(80))
	if err == nil {
		t.Fatal("dial with a foreign trust domain: got nil error")
	}
	// The server refuses the handshake; a TLS 1.3 client may only learn it on its first read.
	if len(called) != 0 {
		t.Fatal("handler called for a foreign client")
	}
	// Another CA is refused too.
	other := newCA(t).issue(t, clientID)
	src.Certificate = func() (*tls.Certificate, error) { return other, nil }
	if _, err := e.pool.Dial(context.Background(), &src, e.target(80)); err == nil {
		t.Fatal("dial with a certificate from another CA: got nil error")
	}
	e.dial(t, 80).Close()
}

func TestServerIdentityMismatch(t *testing.T) {
	e := newEnv(t, echo)
	tgt := e.target(80)
	tgt.Identities = []identity.Identity{mustID(t, "spiffe://cluster.local/ns/server/sa/someone-else")}
	_, err := e.pool.Dial(context.Background(), e.src, tgt)
	if !errors.Is(err, ErrServerIdentity) {
		t.Fatalf("got %v, want ErrServerIdentity", err)
	}
	if !strings.Contains(err.Error(), serverID) {
		t.Errorf("error %q does not name the server's identity", err)
	}
	// Server roots unknown to the client.
	src := *e.src
	src.Roots = func() (*x509.CertPool, error) { return newCA(t).pool, nil }
	if _, err := e.pool.Dial(context.Background(), &src, e.target(80)); err == nil || !strings.Contains(err.Error(), "verify server") {
		t.Fatalf("unknown server CA: got %v, want a verify server error", err)
	}
}

func TestGarbageClients(t *testing.T) {
	e := newEnv(t, echo, func(c *ServerConfig, _ *PoolConfig) { c.HandshakeTimeout = 300 * time.Millisecond })
	random := make([]byte, 4096)
	rand.Read(random)
	clients := map[string][]byte{
		"random":   random,
		"http/1.1": []byte("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n"),
		"stall":    nil, // connects, says nothing
		"partial":  random[:3],
	}
	var conns []net.Conn
	for name, b := range clients {
		c, err := net.Dial("tcp", e.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		conns = append(conns, c)
	}
	// A TLS client that completes TLS but never sends the HTTP/2 preface.
	raw, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	ccert, _ := e.src.Certificate()
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*ccert}, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	conns = append(conns, tc)
	// A TLS client with ALPN http/1.1.
	raw2, _ := net.Dial("tcp", e.addr.String())
	tc2 := tls.Client(raw2, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}, Certificates: []tls.Certificate{*ccert}, MinVersion: tls.VersionTLS13})
	tc2.Handshake()
	conns = append(conns, tc2)

	// The server keeps serving meanwhile.
	s := e.dial(t, 80)
	s.Write([]byte("x"))
	s.CloseWrite()
	if b, _ := io.ReadAll(s); string(b) != "x" {
		t.Fatalf("while garbage is connected: got %q, want x", b)
	}
	s.Close()
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("garbage client %d not dropped", i)
		}
	}
}

func TestPingTimeout(t *testing.T) {
	// A peer that completes the handshake and preface but never answers PINGs.
	e := newEnv(t, echo, func(c *ServerConfig, _ *PoolConfig) {
		c.PingInterval, c.PingTimeout = 20*time.Millisecond, 50*time.Millisecond
	})
	raw, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ccert, _ := e.src.Certificate()
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*ccert}, MinVersion: tls.VersionTLS13})
	tc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, tc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("silent peer not dropped after the PING timeout")
	}
}

func TestDeadlinesAndClose(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(io.Discard, s)
	})
	s := e.dial(t, 80)
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := s.Read(make([]byte, 10)); !errors.Is(err, errDeadline) {
		t.Errorf("read past deadline: got %v, want deadline exceeded", err)
	}
	s.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		done <- err
	}()
	s.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: got %v, want net.ErrClosed", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: got %v, want net.ErrClosed", err)
	}
}

func TestServerCloseFailsStreams(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(io.Discard, s)
	})
	s := e.dial(t, 80)
	e.srv.Close()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err == nil || errors.Is(err, errDeadline) {
		t.Errorf("read after server close: got %v, want a connection error", err)
	}
	waitFor(t, "pool drops the closed connection", func() bool { return e.pool.numConns() == 0 })
}

func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, echo)
	s := e.dial(t, 80)
	first := s.c
	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(context.Background()) }()
	waitFor(t, "client sees GOAWAY", func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return first.goaway
	})
	if first.reserve(100) {
		t.Fatal("a connection that got GOAWAY takes new streams")
	}
	// The open stream keeps working until it ends.
	s.Write([]byte("still here"))
	s.CloseWrite()
	if b, err := io.ReadAll(s); string(b) != "still here" || err != nil {
		t.Fatalf("after GOAWAY: got %q, %v; want \"still here\", nil", b, err)
	}
	s.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitFor(t, "pool drops the drained connection", func() bool { return e.pool.numConns() == 0 })
	e.close()
	checkNoLeaks(t)
}

func TestIdleStreamHoldsNoBuffer(t *testing.T) {
	e := newEnv(t, echo)
	s := e.dial(t, 80)
	defer s.Close()
	msg := bytes.Repeat([]byte("y"), 300<<10)
	go s.Write(msg)
	if _, err := io.ReadFull(s, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	s.c.mu.Lock()
	held := len(s.rb.chunks)
	s.c.mu.Unlock()
	if held != 0 {
		t.Errorf("idle stream holds %d receive chunks, want 0", held)
	}
}

func TestLeaksAfterClose(t *testing.T) {
	e := newEnv(t, echo)
	var streams []*Stream
	for range 10 {
		s := e.dial(t, 80)
		s.Write([]byte("x"))
		streams = append(streams, s)
	}
	streams[0].Close() // aborted (RST)
	streams[1].CloseWrite()
	e.close() // the rest fail with the connection
	for _, s := range streams[2:] {
		if _, err := s.Read(make([]byte, 8)); err == nil {
			// buffered echo data may come first
			if _, err := s.Read(make([]byte, 8)); err == nil {
				t.Error("read after pool close: got nil error")
			}
		}
	}
	checkNoLeaks(t)
}

func TestPeerReset(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		s, err := r.Accept()
		if err != nil {
			return
		}
		s.Read(make([]byte, 1))
		s.Close() // before the client finished: RST_STREAM(CANCEL)
	})
	s := e.dial(t, 80)
	defer s.Close()
	s.Write([]byte("x"))
	_, err := io.ReadAll(s)
	if !errors.Is(err, ErrStreamReset) {
		t.Fatalf("read after the server aborted: got %v, want ErrStreamReset", err)
	}
}
