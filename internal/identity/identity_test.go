package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr string
	}{
		{in: "spiffe://cluster.local/ns/default/sa/bookinfo", want: Identity{"cluster.local", "default", "bookinfo"}},
		{in: "spiffe://td/ns/a-b/sa/c_d.e", want: Identity{"td", "a-b", "c_d.e"}},
		{in: "spiffe://td/ns/Ns/sa/SA", want: Identity{"td", "Ns", "SA"}},
		{in: "", wantErr: "want prefix"},
		{in: "http://td/ns/a/sa/b", wantErr: "want prefix"},
		{in: "spiffe://td/ns/a/sa", wantErr: "want spiffe://"},
		{in: "spiffe://td/ns/a/sa/b/c", wantErr: "want spiffe://"},
		{in: "spiffe://td/sa/a/ns/b", wantErr: "want spiffe://"},
		{in: "spiffe:///ns/a/sa/b", wantErr: "empty trust domain"},
		{in: "spiffe://TD/ns/a/sa/b", wantErr: "trust domain"},
		{in: "spiffe://td:80/ns/a/sa/b", wantErr: "trust domain"},
		{in: "spiffe://td/ns//sa/b", wantErr: "namespace is empty"},
		{in: "spiffe://td/ns/a/sa/", wantErr: "service account is empty"},
		{in: "spiffe://td/ns/../sa/b", wantErr: "not allowed"},
		{in: "spiffe://td/ns/a b/sa/b", wantErr: "character"},
		{in: "spiffe://td/ns/a/sa/b?x=1", wantErr: "character"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q): got error %v, want one containing %q wrapping ErrInvalid", tt.in, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.in) {
				t.Errorf("Parse(%q): error %q does not name the input", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): got error %v, want %+v", tt.in, err, tt.want)
			continue
		}
		if got != tt.want {
			t.Errorf("Parse(%q): got %+v, want %+v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.in {
			t.Errorf("Parse(%q).String(): got %q, want the input", tt.in, s)
		}
	}
	if got := (Identity{}).String(); got != "" {
		t.Errorf("zero Identity String: got %q, want \"\"", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/default/sa/x", "spiffe://a/ns/b/sa/c/", "spiffe:///ns//sa/", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q, want the input", s, id.String())
		}
		again, err := Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("re-parse of %q: got %+v, %v; want %+v", id.String(), again, err, id)
		}
	})
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{name}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) leaf(t *testing.T, uris []string, usages []x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usages,
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func TestFromCertificate(t *testing.T) {
	ca := newCA(t, "ca")
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tests := []struct {
		name    string
		uris    []string
		want    Identity
		wantErr string
	}{
		{name: "one", uris: []string{"spiffe://td/ns/a/sa/b"}, want: Identity{"td", "a", "b"}},
		{name: "none", wantErr: "has 0 URI SANs"},
		{name: "two", uris: []string{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/c"}, wantErr: "has 2 URI SANs"},
		{name: "bad", uris: []string{"spiffe://td/a/b"}, wantErr: "invalid SPIFFE identity"},
	}
	for _, tt := range tests {
		got, err := FromCertificate(ca.leaf(t, tt.uris, both))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: got %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}

func TestVerifyChain(t *testing.T) {
	ca, other := newCA(t, "ca"), newCA(t, "other")
	id := "spiffe://td/ns/a/sa/b"
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		roots   *x509.CertPool
		usages  []x509.ExtKeyUsage
		wantErr string
	}{
		{name: "server ok", chain: []*x509.Certificate{ca.leaf(t, []string{id}, server)}, roots: ca.pool, usages: server},
		{name: "any usage", chain: []*x509.Certificate{ca.leaf(t, []string{id}, client)}, roots: ca.pool},
		{name: "wrong usage", chain: []*x509.Certificate{ca.leaf(t, []string{id}, server)}, roots: ca.pool, usages: client, wantErr: "incompatible key usage"},
		{name: "other root", chain: []*x509.Certificate{other.leaf(t, []string{id}, server)}, roots: ca.pool, usages: server, wantErr: "unknown authority"},
		{name: "no roots", chain: []*x509.Certificate{ca.leaf(t, []string{id}, server)}, usages: server, wantErr: "no trust roots"},
		{name: "empty", roots: ca.pool, wantErr: "no certificate"},
		{name: "no SAN", chain: []*x509.Certificate{ca.leaf(t, nil, server)}, roots: ca.pool, usages: server, wantErr: "0 URI SANs"},
	}
	for _, tt := range tests {
		got, err := VerifyChain(tt.chain, tt.roots, tt.usages, time.Time{})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != id {
			t.Errorf("%s: got %v, %v; want %s", tt.name, got, err, id)
		}
	}
}
