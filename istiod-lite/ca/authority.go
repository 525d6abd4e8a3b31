package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of the certificate lifetimes. DefaultTTL is DESIGN.md section 7's 24 h.
const (
	DefaultTTL    = 24 * time.Hour
	DefaultMaxTTL = 48 * time.Hour
	// RootTTL is the lifetime of a self-signed root made by NewSelfSigned.
	RootTTL = 10 * 365 * 24 * time.Hour
	// backdate is how far in the past a leaf's NotBefore lies, so that a verifier whose
	// clock is slightly behind ours accepts a certificate at once.
	backdate = time.Minute
)

var (
	// ErrInvalidCSR wraps every reason a certificate signing request is refused.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrInvalidSPIFFEID wraps every reason an identity cannot be put into a certificate.
	ErrInvalidSPIFFEID = errors.New("invalid SPIFFE ID")
	// ErrCAExpired is returned by Sign when the signing certificate (or a certificate above
	// it) is no longer valid.
	ErrCAExpired = errors.New("CA certificate expired")
)

// Authority signs workload certificates. It is immutable after construction and safe for
// concurrent use.
type Authority struct {
	trustDomain spiffeid.TrustDomain
	signer      crypto.Signer
	cert        *x509.Certificate // the certificate leaves are signed with
	// issuerChain is what follows the leaf in every response: cert, its intermediates, and
	// the root last, one PEM block per entry.
	issuerChain []string
	// notAfter is the earliest NotAfter in issuerChain: no leaf outlives its chain.
	notAfter time.Time
	rootsPEM []byte
	ttl      ttlPolicy
	now      func() time.Time // time.Now; tests move it
}

// Option configures an Authority.
type Option func(*Authority)

// WithTTL sets the lifetime given to a request that asks for none (defaultTTL) and the
// longest one granted (maxTTL); longer requests are shortened to maxTTL. Zero values keep the
// defaults (DefaultTTL, DefaultMaxTTL).
func WithTTL(defaultTTL, maxTTL time.Duration) Option {
	return func(a *Authority) {
		if defaultTTL > 0 {
			a.ttl.def = defaultTTL
		}
		if maxTTL > 0 {
			a.ttl.max = maxTTL
		}
	}
}

// ttlPolicy turns a requested lifetime into the one granted.
type ttlPolicy struct{ def, max time.Duration }

func (p ttlPolicy) grant(requested time.Duration) time.Duration {
	switch {
	case requested <= 0:
		return min(p.def, p.max)
	case requested > p.max:
		return p.max
	default:
		return requested
	}
}

func newAuthority(trustDomain string, opts []Option) (*Authority, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w; use a DNS-like name such as cluster.local", trustDomain, err)
	}
	a := &Authority{
		trustDomain: td,
		ttl:         ttlPolicy{def: DefaultTTL, max: DefaultMaxTTL},
		now:         time.Now,
	}
	for _, o := range opts {
		o(a)
	}
	return a, nil
}

// NewSelfSigned makes an Authority with a fresh ECDSA P-256 root valid for RootTTL, whose
// subject (CN and O) names trustDomain. The root signs leaves directly.
func NewSelfSigned(trustDomain string, opts ...Option) (*Authority, error) {
	a, err := newAuthority(trustDomain, opts)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := a.now()
	name := a.trustDomain.Name()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "istiod-lite root CA " + name, Organization: []string{name}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing root certificate: %w", err)
	}
	a.signer = key
	a.cert = root
	a.issuerChain = []string{encodeCert(root)}
	a.notAfter = root.NotAfter
	a.rootsPEM = []byte(a.issuerChain[0])
	return a, nil
}

// TrustDomain returns the trust domain whose identities the Authority signs.
func (a *Authority) TrustDomain() string { return a.trustDomain.Name() }

// RootPEM returns the trust roots in PEM (the self-signed root, or every certificate of
// root-cert.pem). It is what workloads must trust and what PublishRoot distributes. The
// returned slice is a copy.
func (a *Authority) RootPEM() []byte { return append([]byte(nil), a.rootsPEM...) }

// Sign issues a certificate for spiffeID to the public key of the PEM CSR csrPEM, valid for
// ttl (0 or less: the default; above the maximum: the maximum), never past the signing
// certificate's NotAfter. Everything in the CSR other than its key and signature is ignored:
// the leaf has no subject, exactly one URI SAN (spiffeID), key usage digital signature + key
// encipherment and extended key usage server + client auth. The chain is the leaf first and
// the root last, one PEM certificate per entry.
//
// Errors wrap ErrInvalidCSR (bad request), ErrInvalidSPIFFEID (spiffeID malformed or in
// another trust domain) or ErrCAExpired.
func (a *Authority) Sign(csrPEM []byte, spiffeID string, ttl time.Duration) ([]string, error) {
	_, chain, err := a.issue(csrPEM, spiffeID, ttl)
	return chain, err
}

// issue is Sign that also returns the parsed leaf (for audit lines).
func (a *Authority) issue(csrPEM []byte, spiffeID string, ttl time.Duration) (*x509.Certificate, []string, error) {
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return nil, nil, fmt.Errorf("%w %q: %w", ErrInvalidSPIFFEID, spiffeID, err)
	}
	if !id.MemberOf(a.trustDomain) {
		return nil, nil, fmt.Errorf("%w %q: not in trust domain %q; this CA signs only %s identities",
			ErrInvalidSPIFFEID, spiffeID, a.trustDomain.Name(), a.trustDomain.IDString())
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	now := a.now()
	if !now.Before(a.notAfter) {
		return nil, nil, fmt.Errorf("%w at %s; rotate the CA (cacerts secret)", ErrCAExpired, a.notAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(a.ttl.grant(ttl))
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		// An empty subject makes crypto/x509 mark the SAN extension critical (RFC 5280 4.2.1.6).
		URIs: []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.signer)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate for %s: %w", spiffeID, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing signed certificate: %w", err)
	}
	chain := make([]string, 0, 1+len(a.issuerChain))
	chain = append(chain, encodeCert(leaf))
	chain = append(chain, a.issuerChain...)
	return leaf, chain, nil
}

// newSerial returns a random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodeCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}
