package admin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"
)

func TestDescribeChain(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	id, _ := url.Parse("spiffe://cluster.local/ns/default/sa/reviews")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xabc),
		Subject:      pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(23 * time.Hour),
		URIs:         []*url.URL{id},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		now  time.Time
		want string
	}{
		{name: "valid", now: now, want: "23h0m0s"},
		{name: "expired", now: now.Add(24 * time.Hour), want: "-1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DescribeChain([]*x509.Certificate{cert}, tt.now)
			if len(got) != 1 {
				t.Fatalf("len: got %d, want 1", len(got))
			}
			c := got[0]
			if c.ExpiresIn != tt.want || c.SerialNumber != "abc" || !c.NotAfter.Equal(now.Add(23*time.Hour)) ||
				!slices.Equal(c.URIs, []string{id.String()}) || c.Subject != "O=cluster.local" {
				t.Errorf("got %+v, want expiresIn %s, serial abc, the SPIFFE URI and O=cluster.local", c, tt.want)
			}
		})
	}
}
