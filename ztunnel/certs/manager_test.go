package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/ca"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const testTimeout = 20 * time.Second

var (
	own = identity.Identity{TrustDomain: "cluster.local", Namespace: "istio-system", ServiceAccount: "ztunnel"}
	web = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
)

// fakeCA signs every CSR for the identity asked for, unless told to fail.
type fakeCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	root    *x509.Certificate
	rootKey *ecdsa.PrivateKey

	mu       sync.Mutex
	requests []request
	failNext int  // refuse this many requests
	failAll  bool // refuse every request
	inFlight int
	maxSeen  int
	hold     chan struct{} // when set, requests wait for it to close
}

type request struct {
	at           time.Time
	token        []string
	impersonated string
	ttl          int64
	csr          *x509.CertificateRequest
}

func newFakeCA(t *testing.T) *fakeCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &fakeCA{root: root, rootKey: key}
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "csr: not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	r := request{at: time.Now(), token: md.Get("authorization"), impersonated: req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue(),
		ttl: req.GetValidityDuration(), csr: csr}
	f.mu.Lock()
	f.requests = append(f.requests, r)
	f.inFlight++
	f.maxSeen = max(f.maxSeen, f.inFlight)
	hold := f.hold
	fail := f.failAll || f.failNext > 0
	if f.failNext > 0 {
		f.failNext--
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, status.Error(codes.Unavailable, "fake CA refuses for now")
	}
	id := r.impersonated
	if id == "" {
		id = own.String()
	}
	u, _ := url.Parse(id)
	now := time.Now()
	leaf := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), URIs: []*url.URL{u}, NotBefore: now.Add(-time.Minute),
		NotAfter: now.Add(time.Duration(r.ttl) * time.Second), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, f.root, csr.PublicKey, f.rootKey)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.root.Raw})),
	}}, nil
}

func (f *fakeCA) snapshot() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.requests...)
}

// run starts the fake CA and a running Manager configured by cfg (Address, Plaintext, TokenFile
// and Own are filled in).
func run(t *testing.T, ca *fakeCA, cfg Config) *Manager {
	t.Helper()
	testutil.CheckGoroutines(t, testTimeout)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(g, ca)
	go g.Serve(lis)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("ztunnel-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Address, cfg.Plaintext, cfg.TokenFile, cfg.Own = lis.Addr().String(), true, tok, own
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		g.Stop()
	})
	return m
}

func get(t *testing.T, m *Manager, id identity.Identity) *x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := m.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return c.Leaf
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, what, cond)
}

func TestFetchOwnAndImpersonated(t *testing.T) {
	ca := newFakeCA(t)
	m := run(t, ca, Config{})
	m.Add(own)
	m.Add(web)
	for _, id := range []identity.Identity{own, web} {
		leaf := get(t, m, id)
		got, err := identity.FromCertificate(leaf)
		if err != nil || got != id {
			t.Errorf("certificate of %s: got identity %v, %v", id, got, err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate of %s does not verify with Roots(): %v", id, err)
		}
	}
	reqs := ca.snapshot()
	if len(reqs) != 2 {
		t.Fatalf("requests: got %d, want 2", len(reqs))
	}
	for _, r := range reqs {
		if len(r.token) != 1 || r.token[0] != "Bearer ztunnel-token" {
			t.Errorf("authorization: got %q", r.token)
		}
		if r.ttl != 24*3600 {
			t.Errorf("validity: got %d s, want 24 h", r.ttl)
		}
		if r.csr.Subject.CommonName != "" || len(r.csr.URIs) != 1 || len(r.csr.DNSNames) != 0 {
			t.Errorf("CSR: got CN %q URIs %v DNS %v, want no CN and one URI SAN", r.csr.Subject.CommonName, r.csr.URIs, r.csr.DNSNames)
		}
		if k, ok := r.csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("CSR key: got %T, want ECDSA P-256", r.csr.PublicKey)
		}
		switch r.csr.URIs[0].String() {
		case own.String():
			if r.impersonated != "" {
				t.Errorf("own identity sent ImpersonatedIdentity %q", r.impersonated)
			}
		case web.String():
			if r.impersonated != web.String() {
				t.Errorf("web: ImpersonatedIdentity %q, want %s", r.impersonated, web)
			}
		default:
			t.Errorf("CSR URI: got %v", r.csr.URIs)
		}
	}
	st := m.Status()
	b, _ := json.Marshal(st)
	if len(st) != 2 || !st[0].Ready || st[0].NotAfter.IsZero() || st[0].RefreshAt.IsZero() {
		t.Errorf("Status: got %s", b)
	}
}

func TestReferenceCounts(t *testing.T) {
	m := run(t, newFakeCA(t), Config{})
	ctx := context.Background()
	if _, err := m.Get(ctx, web); !errors.Is(err, ErrNotManaged) {
		t.Errorf("Get before Add: got %v, want ErrNotManaged", err)
	}
	m.Add(web)
	m.Add(web)
	get(t, m, web)
	m.Remove(web)
	get(t, m, web) // one pod still uses it
	m.Remove(web)
	if _, err := m.Get(ctx, web); !errors.Is(err, ErrNotManaged) {
		t.Errorf("Get after the last Remove: got %v, want ErrNotManaged", err)
	}
	if len(m.Status()) != 0 {
		t.Errorf("Status after Remove: got %v", m.Status())
	}
}

func TestBackoff(t *testing.T) {
	ca := newFakeCA(t)
	ca.failNext = 3
	m := run(t, ca, Config{InitialBackoff: 40 * time.Millisecond, MaxBackoff: time.Second})
	m.Add(web)
	get(t, m, web)
	reqs := ca.snapshot()
	if len(reqs) != 4 {
		t.Fatalf("requests: got %d, want 3 refused and 1 served", len(reqs))
	}
	for k := 1; k < len(reqs); k++ {
		gap := reqs[k].at.Sub(reqs[k-1].at)
		lo := (40 * time.Millisecond << (k - 1)) / 2 // backoff 40, 80, 160 ms with jitter down to half
		if gap < lo-5*time.Millisecond {
			t.Errorf("retry %d came after %v, want at least %v", k, gap, lo)
		}
	}
	if st := m.Status(); st[0].Failures != 0 || st[0].LastError != "" {
		t.Errorf("Status after success: got %+v, want failures cleared", st[0])
	}
}

func TestBackoffCapped(t *testing.T) {
	ca := newFakeCA(t)
	ca.failAll = true
	// The delays the manager chose, from its log: wall-clock gaps between requests would also
	// count the machine's load.
	waits := &retryLog{}
	m := run(t, ca, Config{InitialBackoff: 20 * time.Millisecond, MaxBackoff: 60 * time.Millisecond, Logger: slog.New(waits)})
	m.Add(web)
	waitFor(t, "8 failed fetches", func() bool { return len(ca.snapshot()) >= 8 })
	got := waits.values()
	if len(got) < 7 {
		t.Fatalf("logged %d retry delays for 8 failed fetches, want at least 7", len(got))
	}
	for k, w := range got {
		if w > 60*time.Millisecond {
			t.Errorf("retry %d waits %v, want at most the 60 ms cap", k+1, w)
		}
	}
	if last := got[len(got)-1]; last < 30*time.Millisecond {
		t.Errorf("retry %d waits %v: the backoff did not grow to the cap (jitter goes down to half of it, 30 ms)", len(got), last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Get(ctx, web); err == nil || !strings.Contains(err.Error(), "fake CA refuses") {
		t.Errorf("Get while failing: got %v, want the deadline with the last fetch error", err)
	}
}

// retryLog is a slog.Handler that keeps the retry_in values of the manager's log lines.
type retryLog struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (l *retryLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *retryLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *retryLog) WithGroup(string) slog.Handler            { return l }
func (l *retryLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "retry_in" {
			l.mu.Lock()
			l.waits = append(l.waits, a.Value.Duration())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *retryLog) values() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.waits...)
}

func TestRefreshAtHalfLife(t *testing.T) {
	ca := newFakeCA(t)
	m := run(t, ca, Config{TTL: 2 * time.Second})
	m.Add(web)
	first := get(t, m, web)
	waitFor(t, "a refresh", func() bool { return len(ca.snapshot()) >= 2 })
	reqs := ca.snapshot()
	// Certificate times have a precision of a second: NotAfter is 1 to 2 s away.
	if gap := reqs[1].at.Sub(reqs[0].at); gap < 450*time.Millisecond || gap > 1800*time.Millisecond {
		t.Errorf("refresh after %v, want about 1 s (half of 2 s)", gap)
	}
	waitFor(t, "the refreshed certificate", func() bool { return get(t, m, web).SerialNumber.Cmp(first.SerialNumber) != 0 })
}

func TestRetryNeverPastExpiry(t *testing.T) {
	ca := newFakeCA(t)
	m := run(t, ca, Config{TTL: 2 * time.Second, InitialBackoff: 10 * time.Second, MaxBackoff: 10 * time.Second})
	m.Add(web)
	leaf := get(t, m, web)
	ca.mu.Lock()
	ca.failAll = true
	ca.mu.Unlock()
	// The refresh at ~1 s fails; the next try, with a 10 s backoff, must come before expiry.
	waitFor(t, "a retry after the failed refresh", func() bool { return len(ca.snapshot()) >= 3 })
	reqs := ca.snapshot()
	if reqs[2].at.After(leaf.NotAfter.Add(300 * time.Millisecond)) {
		t.Errorf("retry at %v, after the certificate expired at %v", reqs[2].at, leaf.NotAfter)
	}
}

func TestMaxInFlight(t *testing.T) {
	ca := newFakeCA(t)
	ca.hold = make(chan struct{})
	m := run(t, ca, Config{MaxInFlight: 3})
	var ids []identity.Identity
	for i := range 10 {
		id := identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "sa" + string(rune('a'+i))}
		ids = append(ids, id)
		m.Add(id)
	}
	waitFor(t, "3 fetches in flight", func() bool { return len(ca.snapshot()) == 3 })
	ca.mu.Lock()
	close(ca.hold)
	ca.hold = nil
	ca.mu.Unlock()
	for _, id := range ids {
		get(t, m, id)
	}
	if ca.maxSeen > 3 {
		t.Errorf("fetches in flight: saw %d, want at most 3", ca.maxSeen)
	}
}

func TestCertificateChecksResponse(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, _, err := certificate(web, key, []string{"x"}); err == nil {
		t.Error("chain of one: got no error")
	}
	if _, _, err := certificate(web, key, []string{"not pem", "also not"}); err == nil {
		t.Error("chain without PEM: got no error")
	}
}
