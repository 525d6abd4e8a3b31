package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// testTimeout bounds every wait in this package's tests.
const testTimeout = 30 * time.Second

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, testTimeout, what, cond)
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor makes a PEM CSR signed by key, carrying a subject and SANs the CA must ignore.
func csrFor(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	u, _ := url.Parse("spiffe://evil.example/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "requested-cn", Organization: []string{"requested-o"}},
		DNSNames:    []string{"requested.example"},
		IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)},
		URIs:        []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// testCA is a CA certificate with its key, for building cacerts material.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func (c testCA) certPEM() []byte { return []byte(encodeCert(c.cert)) }

func (c testCA) keyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

type caSpec struct {
	name     string
	parent   *testCA // nil: self-signed
	key      crypto.Signer
	notAfter time.Time // zero: in a year
	notCA    bool
}

func makeCA(t testing.TB, s caSpec) testCA {
	t.Helper()
	key := s.key
	if key == nil {
		key = newP256(t)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	notAfter := s.notAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  !s.notCA,
	}
	if s.notCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	parent, parentKey := tmpl, key
	if s.parent != nil {
		parent, parentKey = s.parent.cert, s.parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

func concatPEM(parts ...[]byte) []byte {
	var b strings.Builder
	for _, p := range parts {
		b.Write(p)
	}
	return []byte(b.String())
}

// parseChain decodes a response chain, one certificate per entry.
func parseChain(t *testing.T, chain []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for i, p := range chain {
		block, rest := pem.Decode([]byte(p))
		if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
			t.Fatalf("chain[%d]: got %q, want exactly one PEM CERTIFICATE", i, p)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("chain[%d]: %v", i, err)
		}
		out = append(out, c)
	}
	return out
}

// verifyChain checks that chain (leaf first, root last) verifies to roots for both TLS uses.
func verifyChain(t *testing.T, chain []*x509.Certificate, roots []byte) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		t.Fatalf("roots: no certificate in %q", roots)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verifying leaf for usage %v: %v", usage, err)
		}
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			t.Errorf("chain[%d] (%s) is not signed by chain[%d] (%s): %v", i, chain[i].Subject, i+1, chain[i+1].Subject, err)
		}
	}
	last := chain[len(chain)-1]
	if last.CheckSignatureFrom(last) != nil {
		t.Errorf("chain ends with %s, want a self-signed root", last.Subject)
	}
}

func mustRSA(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
