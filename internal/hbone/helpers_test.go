package hbone

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serial.Lock()
	defer serial.Unlock()
	serial.n++
	return big.NewInt(serial.n)
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"test ca"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a workload certificate for id (server and client auth, like the mesh CA).
func (ca *testCA) issue(t testing.TB, id string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

const (
	serverID = "spiffe://cluster.local/ns/server/sa/srv"
	clientID = "spiffe://cluster.local/ns/client/sa/cli"
)

func mustID(t testing.TB, s string) identity.Identity {
	t.Helper()
	id, err := identity.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// env is a server on loopback plus a client source, all from one CA.
type env struct {
	t      testing.TB
	ca     *testCA
	srv    *Server
	ln     net.Listener
	addr   netip.AddrPort
	src    *Source
	pool   *Pool
	served chan error
	once   sync.Once
}

type envOption func(*ServerConfig, *PoolConfig)

func newEnv(t testing.TB, h Handler, opts ...envOption) *env {
	t.Helper()
	ca := newCA(t)
	scert := ca.issue(t, serverID)
	ccert := ca.issue(t, clientID)
	cfg := ServerConfig{
		Certificate: func() (*tls.Certificate, error) { return scert, nil },
		Roots:       func() (*x509.CertPool, error) { return ca.pool, nil },
		TrustDomain: "cluster.local",
		Handler:     h,
	}
	var pcfg PoolConfig
	for _, o := range opts {
		o(&cfg, &pcfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// SO_REUSEPORT, so that a test can start a second server on the same address.
	ln, err := reusePortListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t: t, ca: ca, srv: srv, ln: ln,
		addr: ln.Addr().(*net.TCPAddr).AddrPort(),
		src: &Source{
			Identity:    mustID(t, clientID),
			Certificate: func() (*tls.Certificate, error) { return ccert, nil },
			Roots:       func() (*x509.CertPool, error) { return ca.pool, nil },
		},
		pool:   NewPool(pcfg),
		served: make(chan error, 1),
	}
	go func() { e.served <- srv.Serve(ln) }()
	t.Cleanup(e.close)
	return e
}

func (e *env) close() { e.once.Do(e.doClose) }

func (e *env) doClose() {
	e.pool.Close()
	e.srv.Close()
	if err := <-e.served; !errors.Is(err, ErrServerClosed) {
		e.t.Errorf("Serve: got %v, want ErrServerClosed", err)
	}
}

// target returns a Target to the env's server with the given authority port.
func (e *env) target(port uint16) Target {
	return Target{
		Address:    e.addr,
		Authority:  netip.AddrPortFrom(e.addr.Addr(), port),
		Identities: []identity.Identity{mustID(e.t, serverID)},
	}
}

func (e *env) dial(t testing.TB, port uint16) *Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.pool.Dial(ctx, e.src, e.target(port))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return s
}

// echo is a handler that accepts and echoes until EOF, then half-closes.
func echo(r *Request) {
	s, err := r.Accept()
	if err != nil {
		return
	}
	defer s.Close()
	io.Copy(s, s)
	s.CloseWrite()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, what, cond)
}

// checkNoLeaks fails if goroutines of this package outlive the test.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	var last string
	deadline := time.Now().Add(10 * time.Second)
	for {
		last = leaked()
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked goroutines:\n%s", last)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

func leaked() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*T).Run") ||
			strings.Contains(g, "testing.(*F)") || strings.Contains(g, "testing.runFuzz") {
			continue
		}
		if strings.Contains(g, "ambit/internal/hbone.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

var errDeadline = osErrDeadline
var osErrDeadline = os.ErrDeadlineExceeded

// TestMain fails the run if any goroutine of this package outlives the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for leaked() != "" && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling interval
		}
		if s := leaked(); s != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines after all tests:\n%s\n", s)
			code = 1
		}
	}
	os.Exit(code)
}

// reusePortListen listens on addr with SO_REUSEPORT, as ztunnel's in-pod listeners do.
func reusePortListen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}
