package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// xnetServer serves CONNECT with golang.org/x/net/http2: 401 for port 401,
// otherwise 200 and an echo of the request body.
func xnetServer(t testing.TB, ca *testCA) netip.AddrPort {
	t.Helper()
	cert := ca.issue(t, serverID)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Small frames and windows: our client must honour the peer's settings.
	srv := &http2.Server{MaxReadFrameSize: 16 << 10, MaxUploadBufferPerStream: 256 << 10, MaxUploadBufferPerConnection: 512 << 10}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "not CONNECT", http.StatusBadRequest)
			return
		}
		if ap, err := netip.ParseAddrPort(r.Host); err != nil || ap.Port() == 401 {
			http.Error(w, "denied", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
		f := w.(http.Flusher)
		f.Flush()
		buf := make([]byte, 256<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				f.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	done := make(chan struct{})
	conns := make(chan net.Conn, 64)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
			go func() {
				// ServeConn checks the TLS version: finish the handshake first.
				if err := c.(*tls.Conn).Handshake(); err != nil {
					c.Close()
					return
				}
				srv.ServeConn(c, &http2.ServeConnOpts{Handler: h})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func TestClientAgainstXNetServer(t *testing.T) {
	ca := newCA(t)
	addr := xnetServer(t, ca)
	ccert := ca.issue(t, clientID)
	src := &Source{
		Identity:    mustID(t, clientID),
		Certificate: func() (*tls.Certificate, error) { return ccert, nil },
		Roots:       func() (*x509.CertPool, error) { return ca.pool, nil },
	}
	pool := NewPool(PoolConfig{})
	defer pool.Close()
	tgt := Target{Address: addr, Authority: netip.MustParseAddrPort("127.0.0.1:80"), Identities: []identity.Identity{mustID(t, serverID)}}

	size := int64(64 << 20) // far beyond x/net's and our windows
	for _, parallel := range []int{1, 4} {
		errs := make(chan error, parallel)
		for range parallel {
			go func() { errs <- echoCheck(pool, src, tgt, size/int64(parallel)) }()
		}
		for range parallel {
			if err := <-errs; err != nil {
				t.Fatalf("%d parallel: %v", parallel, err)
			}
		}
	}
	deny := tgt
	deny.Authority = netip.MustParseAddrPort("127.0.0.1:401")
	_, err := pool.Dial(context.Background(), src, deny)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 401 || se.Message != "denied\n" {
		t.Fatalf("denied: got %v, want StatusError 401 \"denied\\n\"", err)
	}
}

// echoCheck sends size bytes through an echoing tunnel and compares.
func echoCheck(pool *Pool, src *Source, tgt Target, size int64) error {
	s, err := pool.Dial(context.Background(), src, tgt)
	if err != nil {
		return err
	}
	defer s.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(s, newPattern(size))
		if err == nil {
			err = s.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, s)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	if n != size || !bytes.Equal(h.Sum(nil), newPattern(size).sum()) {
		return errors.New("echoed content differs")
	}
	return nil
}

// xnetTransport is an x/net HTTP/2 client that always dials addr with the test identity.
func xnetTransport(e *env) *http2.Transport {
	return &http2.Transport{
		MaxReadFrameSize: 16 << 10, // our server must honour it
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, e.addr.String())
			if err != nil {
				return nil, err
			}
			var peer identity.Identity
			tc := tls.Client(nc, clientTLS(e.src.Certificate, e.src.Roots, []identity.Identity{mustID(e.t, serverID)}, &peer))
			if err := tc.HandshakeContext(ctx); err != nil {
				nc.Close()
				return nil, err
			}
			return tc, nil
		},
	}
}

func TestServerAgainstXNetClient(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		if r.Authority.Port() == 401 {
			r.Reject(http.StatusUnauthorized, "denied")
			return
		}
		echo(r)
	})
	tr := xnetTransport(e)
	defer tr.CloseIdleConnections()

	size := int64(64 << 20)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://127.0.0.1:80", pr)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status: got %d, want 200", resp.StatusCode)
	}
	go func() {
		_, err := io.Copy(pw, newPattern(size))
		pw.CloseWithError(err)
	}()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("echo: got %d bytes, %v; want %d", n, err, size)
	}
	if !bytes.Equal(h.Sum(nil), newPattern(size).sum()) {
		t.Fatal("echoed content differs")
	}

	for _, tt := range []struct {
		method, url string
		code        int
	}{
		{http.MethodConnect, "https://127.0.0.1:401", 401},
		{http.MethodConnect, "https://127.0.0.1:15008", 400},
		{http.MethodGet, "https://127.0.0.1:80/", 400},
	} {
		req, _ := http.NewRequest(tt.method, tt.url, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Errorf("%s %s: got %d %q, want %d", tt.method, tt.url, resp.StatusCode, body, tt.code)
		}
	}
}
