package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrNoCertificate is returned by VerifyChain when the peer sent no certificate.
var ErrNoCertificate = errors.New("peer sent no certificate")

// VerifyChain verifies chain (leaf first, then intermediates, as in
// tls.ConnectionState.PeerCertificates) against roots for one of usages
// (x509.ExtKeyUsageServerAuth when checking a server, ExtKeyUsageClientAuth when
// checking a client; nil means ExtKeyUsageAny). No host name is checked. It
// returns the leaf's identity. now is the verification time; the zero time means
// the current time.
func VerifyChain(chain []*x509.Certificate, roots *x509.CertPool, usages []x509.ExtKeyUsage, now time.Time) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, ErrNoCertificate
	}
	if roots == nil {
		return Identity{}, errors.New("verify peer certificate: no trust roots")
	}
	if len(usages) == 0 {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: usages, CurrentTime: now}); err != nil {
		return Identity{}, fmt.Errorf("verify peer certificate %q: %w", leaf.Subject, err)
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("verify peer certificate: %w", err)
	}
	return id, nil
}
