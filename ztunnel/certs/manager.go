package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/ztunnel/istiod"
)

// ImpersonatedIdentityKey is the request metadata field naming the identity ztunnel asks for
// on behalf of a pod.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

var (
	// ErrNotManaged is returned by Get for an identity that was not added.
	ErrNotManaged = errors.New("identity not managed: no local pod uses it")
	// ErrStopped is returned by Get once Run has returned.
	ErrStopped = errors.New("certificate manager stopped")
)

// Config configures a Manager.
type Config struct {
	// Address is the CA's host:port (istiod-lite: 15012 TLS, 15010 plaintext).
	Address string
	// Plaintext dials without TLS. Otherwise RootCAFile holds the PEM roots that verify the
	// CA, whose name is ServerName (default: Address's host).
	Plaintext  bool
	RootCAFile string
	ServerName string
	// TokenFile holds ztunnel's service-account token, re-read for every request.
	TokenFile string
	// Own is ztunnel's own identity: requests for it carry no ImpersonatedIdentity.
	Own identity.Identity

	// TTL is the lifetime requested (default 24 h; the CA may grant less).
	TTL time.Duration
	// InitialBackoff and MaxBackoff bound retries after a failed fetch (defaults 500 ms, 150 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxInFlight bounds concurrent fetches (default 8).
	MaxInFlight int

	// Logger reports fetch failures and refreshes; nil: none.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.TTL <= 0 {
		c.TTL = 24 * time.Hour
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 150 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 8
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Manager fetches and refreshes workload certificates. Create it with New, run it with Run.
type Manager struct {
	cfg   Config
	conn  *grpcwire.Conn
	sem   chan struct{} // one token per fetch in flight
	roots atomic.Pointer[x509.CertPool]

	// mu guards the fields below.
	mu      sync.Mutex
	entries map[identity.Identity]*entry
	ctx     context.Context // Run's; nil before Run
	stopped bool
	wg      sync.WaitGroup
	fetches uint64
}

// entry is one identity's certificate and the goroutine that keeps it fresh.
type entry struct {
	id     identity.Identity
	refs   int
	cancel context.CancelFunc // stops the goroutine; nil until started
	ready  chan struct{}      // closed at the first certificate

	// These fields are guarded by Manager.mu.
	cert      *tls.Certificate
	roots     []*x509.Certificate
	refreshAt time.Time
	lastErr   error
	failures  int
}

// New returns a Manager; it does not connect until fetches start.
func New(cfg Config) (*Manager, error) {
	cfg = cfg.withDefaults()
	if cfg.Address == "" {
		return nil, errors.New("creating certificate manager: no Address; set the CA's host:port, e.g. istiod.istio-system.svc:15012")
	}
	conn, err := istiod.Dial(cfg.Address, cfg.Plaintext, cfg.RootCAFile, cfg.ServerName)
	if err != nil {
		return nil, fmt.Errorf("creating certificate manager: certificate manager config: %w", err)
	}
	m := &Manager{cfg: cfg, conn: conn,
		sem: make(chan struct{}, cfg.MaxInFlight), entries: map[identity.Identity]*entry{}}
	m.roots.Store(x509.NewCertPool())
	return m, nil
}

// Run keeps the certificates of the added identities fresh until ctx ends, then stops every
// fetch and closes the connection. Identities added before Run are fetched when it starts.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ctx != nil || m.stopped {
		m.mu.Unlock()
		return errors.New("certificate manager: Run called twice")
	}
	m.ctx = ctx
	for _, e := range m.entries {
		m.startLocked(e)
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	m.stopped = true
	for _, e := range m.entries {
		if e.cancel != nil {
			e.cancel()
		}
	}
	m.mu.Unlock()
	m.wg.Wait()
	return m.conn.Close()
}

// Add takes a reference on id (a local pod uses it) and starts fetching its certificate if it
// is new.
func (m *Manager) Add(id identity.Identity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id, ready: make(chan struct{})}
		m.entries[id] = e
		if m.ctx != nil {
			m.startLocked(e)
		}
	}
	e.refs++
}

// Remove drops a reference on id; with the last one its certificate is forgotten.
func (m *Manager) Remove(id identity.Identity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil {
		return
	}
	if e.refs--; e.refs > 0 {
		return
	}
	delete(m.entries, id)
	if e.cancel != nil {
		e.cancel()
	}
	m.updateRootsLocked()
}

func (m *Manager) startLocked(e *entry) {
	ctx, cancel := context.WithCancel(m.ctx)
	e.cancel = cancel
	m.wg.Go(func() { m.keepFresh(ctx, e) })
}

// Get returns id's certificate, waiting for the first fetch. It fails with ErrNotManaged for an
// identity not added, and with ctx's error (wrapping the last fetch error, if any) when ctx
// ends first.
func (m *Manager) Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	m.mu.Lock()
	e := m.entries[id]
	stopped := m.stopped
	m.mu.Unlock()
	switch {
	case stopped:
		return nil, ErrStopped
	case e == nil:
		return nil, fmt.Errorf("certificate of %s: %w", id, ErrNotManaged)
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		m.mu.Lock()
		last := e.lastErr
		m.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("certificate of %s: %w (last fetch: %w)", id, ctx.Err(), last)
		}
		return nil, fmt.Errorf("certificate of %s: %w", id, ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.cert, nil
}

// Roots returns the current trust roots: those of every certificate held. The pool must not
// be changed.
func (m *Manager) Roots() *x509.CertPool { return m.roots.Load() }

func (m *Manager) updateRootsLocked() {
	pool := x509.NewCertPool()
	var seen [][]byte
	for _, e := range m.entries {
		for _, r := range e.roots {
			if !slices.ContainsFunc(seen, func(b []byte) bool { return string(b) == string(r.Raw) }) {
				seen = append(seen, r.Raw)
				pool.AddCert(r)
			}
		}
	}
	m.roots.Store(pool)
}

// Status is what the config dump shows of one identity.
type Status struct {
	Identity   string    `json:"identity"`
	References int       `json:"references"`
	Ready      bool      `json:"ready"`
	Serial     string    `json:"serial,omitempty"`
	NotBefore  time.Time `json:"notBefore,omitzero"`
	NotAfter   time.Time `json:"notAfter,omitzero"`
	RefreshAt  time.Time `json:"refreshAt,omitzero"`
	Failures   int       `json:"failures,omitempty"`
	LastError  string    `json:"lastError,omitempty"`
}

// Status returns the state of every identity, sorted.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.entries))
	for _, e := range m.entries {
		s := Status{Identity: e.id.String(), References: e.refs, RefreshAt: e.refreshAt, Failures: e.failures}
		if e.cert != nil {
			s.Ready = true
			s.Serial = e.cert.Leaf.SerialNumber.Text(16)
			s.NotBefore, s.NotAfter = e.cert.Leaf.NotBefore, e.cert.Leaf.NotAfter
		}
		if e.lastErr != nil {
			s.LastError = e.lastErr.Error()
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}

// Fetches returns how many fetches have completed (successful or not).
func (m *Manager) Fetches() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fetches
}

// keepFresh fetches e's certificate, then refreshes it at half its lifetime, backing off on
// failures, until ctx ends.
func (m *Manager) keepFresh(ctx context.Context, e *entry) {
	backoff := m.cfg.InitialBackoff
	for {
		select {
		case m.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		cert, roots, err := m.fetch(ctx, e.id)
		<-m.sem
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		var wait time.Duration
		m.mu.Lock()
		m.fetches++
		if err != nil {
			e.lastErr = err
			e.failures++
			// Jitter in [backoff/2, 3*backoff/2): failing ztunnels do not retry together.
			wait = min(backoff/2+mrand.N(backoff+1), m.cfg.MaxBackoff)
			if e.cert != nil {
				if left := e.cert.Leaf.NotAfter.Sub(now); left > 0 && wait > left {
					wait = left // one last try before the certificate expires
				}
			}
			backoff = min(2*backoff, m.cfg.MaxBackoff)
			e.refreshAt = now.Add(wait)
			m.cfg.Logger.Warn("fetching certificate failed", "identity", e.id.String(), "error", err, "retry_in", wait)
		} else {
			first := e.cert == nil
			e.cert, e.roots, e.lastErr, e.failures = cert, roots, nil, 0
			backoff = m.cfg.InitialBackoff
			// Half the lifetime left from now: NotBefore is backdated by the CA, so counting
			// from it would refresh early.
			start := now
			if cert.Leaf.NotBefore.After(start) {
				start = cert.Leaf.NotBefore
			}
			wait = cert.Leaf.NotAfter.Sub(start) / 2
			e.refreshAt = now.Add(wait)
			if _, ok := m.entries[e.id]; ok {
				m.updateRootsLocked()
			}
			if first {
				close(e.ready)
			}
			m.cfg.Logger.Debug("certificate fetched", "identity", e.id.String(), "expiry", cert.Leaf.NotAfter, "refresh_in", wait)
		}
		m.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// fetch asks the CA for a certificate of id with a fresh key and checks what comes back.
func (m *Manager) fetch(ctx context.Context, id identity.Identity) (*tls.Certificate, []*x509.Certificate, error) {
	token, err := m.token()
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key for %s: %w", id, err)
	}
	uri, err := url.Parse(id.String())
	if err != nil {
		return nil, nil, fmt.Errorf("identity %s: %w", id, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{uri}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}
	validity := max(int64(m.cfg.TTL/time.Second), 1)
	var md map[string]string
	if id != m.cfg.Own {
		md = map[string]string{ImpersonatedIdentityKey: id.String()}
	}
	req := marshalRequest(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), validity, md)
	var callMD grpcwire.Metadata
	if token != "" {
		callMD = grpcwire.Metadata{"authorization": "Bearer " + token}
	}
	resp, err := m.conn.Invoke(ctx, createCertificateMethod, callMD, req)
	if err != nil {
		return nil, nil, fmt.Errorf("requesting certificate for %s: %w", id, err)
	}
	chain, err := unmarshalResponse(resp)
	if err != nil {
		return nil, nil, fmt.Errorf("requesting certificate for %s: %w", id, err)
	}
	return certificate(id, key, chain)
}

// certificate checks a response chain (leaf first, root last) against the key and the
// identity asked for.
func certificate(id identity.Identity, key *ecdsa.PrivateKey, chainPEM []string) (*tls.Certificate, []*x509.Certificate, error) {
	if len(chainPEM) < 2 {
		return nil, nil, fmt.Errorf("certificate for %s: chain of %d certificates, want the leaf and at least the root", id, len(chainPEM))
	}
	var chain []*x509.Certificate
	for i, p := range chainPEM {
		rest := []byte(p)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate for %s: chain[%d]: %w", id, i, err)
			}
			chain = append(chain, c)
		}
	}
	if len(chain) < 2 {
		return nil, nil, fmt.Errorf("certificate for %s: no leaf and root in the response", id)
	}
	leaf, root := chain[0], chain[len(chain)-1]
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, fmt.Errorf("certificate for %s: the leaf is not for the key of the request", id)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	got, err := identity.VerifyChain(chain[:len(chain)-1], roots, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, time.Time{})
	if err != nil {
		return nil, nil, fmt.Errorf("certificate for %s: %w", id, err)
	}
	if got != id {
		return nil, nil, fmt.Errorf("certificate for %s: the CA issued %s", id, got)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain[:len(chain)-1] {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, []*x509.Certificate{root}, nil
}

func (m *Manager) token() (string, error) {
	t, err := istiod.Token(m.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("CA token: %w", err)
	}
	return t, nil
}
