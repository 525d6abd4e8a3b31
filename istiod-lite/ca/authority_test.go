package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const testID = "spiffe://cluster.local/ns/shop/sa/cart"

func TestSelfSignedRoot(t *testing.T) {
	a, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(a.RootPEM())
	if block == nil {
		t.Fatalf("RootPEM: got %q, want a PEM certificate", a.RootPEM())
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root: got IsCA %v, key usage %b; want a CA with keyCertSign", root.IsCA, root.KeyUsage)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if k, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("root key: got %T, want ECDSA P-256", root.PublicKey)
	}
	if !strings.Contains(root.Subject.CommonName, "cluster.local") || !slices.Equal(root.Subject.Organization, []string{"cluster.local"}) {
		t.Errorf("root subject: got %s, want CN and O naming cluster.local", root.Subject)
	}
	if got, want := root.NotAfter.Sub(root.NotBefore), RootTTL; got < want || got > want+2*time.Minute {
		t.Errorf("root validity: got %s, want about %s", got, want)
	}
	if got, want := a.TrustDomain(), "cluster.local"; got != want {
		t.Errorf("TrustDomain: got %q, want %q", got, want)
	}
	if _, err := NewSelfSigned("Not A Domain!"); err == nil {
		t.Errorf("NewSelfSigned(%q): got no error, want one", "Not A Domain!")
	}
}

func TestSignLeaf(t *testing.T) {
	tests := []struct {
		name    string
		opts    []Option
		ttl     time.Duration
		wantTTL time.Duration
	}{
		{name: "zero gets the default", ttl: 0, wantTTL: 24 * time.Hour},
		{name: "negative gets the default", ttl: -time.Hour, wantTTL: 24 * time.Hour},
		{name: "short is kept", ttl: time.Hour, wantTTL: time.Hour},
		{name: "max is kept", ttl: 48 * time.Hour, wantTTL: 48 * time.Hour},
		{name: "above max is clamped", ttl: 1000 * time.Hour, wantTTL: 48 * time.Hour},
		{name: "configured default", opts: []Option{WithTTL(2*time.Hour, 3*time.Hour)}, ttl: 0, wantTTL: 2 * time.Hour},
		{name: "configured max", opts: []Option{WithTTL(2*time.Hour, 3*time.Hour)}, ttl: 5 * time.Hour, wantTTL: 3 * time.Hour},
		{name: "default above max is clamped", opts: []Option{WithTTL(0, time.Hour)}, ttl: 0, wantTTL: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewSelfSigned("cluster.local", tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			chain, err := a.Sign(csrFor(t, newP256(t)), testID, tt.ttl)
			after := time.Now()
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if len(chain) != 2 {
				t.Fatalf("chain: got %d entries, want 2 (leaf, root)", len(chain))
			}
			if got, want := chain[1], string(a.RootPEM()); got != want {
				t.Errorf("chain[1]: got %q, want the root %q", got, want)
			}
			certs := parseChain(t, chain)
			verifyChain(t, certs, a.RootPEM())
			checkLeaf(t, certs[0], testID)
			if lo, hi := before.Add(tt.wantTTL).Add(-time.Second), after.Add(tt.wantTTL).Add(time.Second); certs[0].NotAfter.Before(lo) || certs[0].NotAfter.After(hi) {
				t.Errorf("NotAfter: got %s, want now+%s", certs[0].NotAfter, tt.wantTTL)
			}
			if lo, hi := before.Add(-backdate).Add(-time.Second), after.Add(-backdate); certs[0].NotBefore.Before(lo) || certs[0].NotBefore.After(hi) {
				t.Errorf("NotBefore: got %s, want a minute before %s", certs[0].NotBefore, before)
			}
		})
	}
}

// checkLeaf checks what every workload certificate must look like.
func checkLeaf(t *testing.T, leaf *x509.Certificate, id string) {
	t.Helper()
	if leaf.Subject.String() != "" {
		t.Errorf("subject: got %q, want empty (no CN)", leaf.Subject)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("URI SANs: got %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("other SANs: got DNS %v IP %v email %v, want none", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if got, want := leaf.KeyUsage, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment; got != want {
		t.Errorf("key usage: got %b, want %b", got, want)
	}
	if got, want := leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(got, want) {
		t.Errorf("ext key usage: got %v, want %v", got, want)
	}
	if leaf.IsCA {
		t.Errorf("IsCA: got true, want false")
	}
	critical := false
	for _, e := range leaf.Extensions {
		if e.Id.Equal([]int{2, 5, 29, 17}) {
			critical = e.Critical
		}
	}
	if !critical {
		t.Errorf("SAN extension: got non-critical, want critical (the subject is empty)")
	}
}

func TestSignKeyTypes(t *testing.T) {
	a, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		key     crypto.Signer
		wantErr string // empty: accepted
	}{
		{name: "ECDSA P-256", key: newP256(t)},
		{name: "ECDSA P-384", key: p384},
		{name: "RSA 2048", key: rsa2048},
		{name: "RSA 1024", key: rsa1024, wantErr: "RSA key has 1024 bits"},
		{name: "ECDSA P-224", key: p224, wantErr: "curve P-224 not accepted"},
		{name: "Ed25519", key: ed, wantErr: "ed25519.PublicKey not accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := a.Sign(csrFor(t, tt.key), testID, 0)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Sign: got %v, want a certificate", err)
				}
				certs := parseChain(t, chain)
				verifyChain(t, certs, a.RootPEM())
				checkLeaf(t, certs[0], testID)
				return
			}
			if !errors.Is(err, ErrInvalidCSR) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Sign: got %v, want ErrInvalidCSR mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	a, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	good := csrFor(t, newP256(t))
	block, _ := pem.Decode(good)
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-3] ^= 0xff // inside the signature value
	badSig := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})
	tests := []struct {
		name    string
		csr     []byte
		id      string
		wantIs  error
		wantErr string
	}{
		{name: "empty", csr: nil, id: testID, wantIs: ErrInvalidCSR, wantErr: "empty"},
		{name: "not PEM", csr: []byte("hello"), id: testID, wantIs: ErrInvalidCSR, wantErr: "no PEM block"},
		{name: "wrong PEM type", csr: a.RootPEM(), id: testID, wantIs: ErrInvalidCSR, wantErr: `"CERTIFICATE"`},
		{name: "garbage DER", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), id: testID, wantIs: ErrInvalidCSR, wantErr: "parsing"},
		{name: "wrong signature", csr: badSig, id: testID, wantIs: ErrInvalidCSR, wantErr: "signature does not verify"},
		{name: "other trust domain", csr: good, id: "spiffe://other.example/ns/shop/sa/cart", wantIs: ErrInvalidSPIFFEID, wantErr: "not in trust domain"},
		{name: "malformed id", csr: good, id: "https://cluster.local/ns/shop/sa/cart", wantIs: ErrInvalidSPIFFEID, wantErr: "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := a.Sign(tt.csr, tt.id, 0)
			if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Sign: got chain of %d, error %v; want %v mentioning %q", len(chain), err, tt.wantIs, tt.wantErr)
			}
		})
	}
}

func TestSignNeverOutlivesCA(t *testing.T) {
	root := makeCA(t, caSpec{name: "root"})
	soon := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	inter := makeCA(t, caSpec{name: "short-lived intermediate", parent: &root, notAfter: soon})
	a, err := NewFromPluginCerts("cluster.local", PluginCerts{
		CACert: inter.certPEM(), CAKey: inter.keyPEM(t), RootCert: root.certPEM(),
		CertChain: concatPEM(inter.certPEM(), root.certPEM()),
	})
	if err != nil {
		t.Fatal(err)
	}
	certs := parseChain(t, mustSign(t, a, 24*time.Hour))
	if got, want := certs[0].NotAfter, soon; !got.Equal(want) {
		t.Errorf("NotAfter: got %s, want the intermediate's NotAfter %s", got, want)
	}

	// Once the CA has expired, nothing is signed.
	late, err := NewFromPluginCerts("cluster.local", PluginCerts{CACert: inter.certPEM(), CAKey: inter.keyPEM(t), RootCert: root.certPEM()})
	if err != nil {
		t.Fatal(err)
	}
	late.now = func() time.Time { return soon.Add(time.Minute) }
	if _, err := late.Sign(csrFor(t, newP256(t)), testID, 0); !errors.Is(err, ErrCAExpired) {
		t.Errorf("Sign after the CA expired: got %v, want ErrCAExpired", err)
	}
}

func mustSign(t *testing.T, a *Authority, ttl time.Duration) []string {
	t.Helper()
	chain, err := a.Sign(csrFor(t, newP256(t)), testID, ttl)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return chain
}
