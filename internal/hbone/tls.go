package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// CertificateFunc returns the certificate to present now. It is called for
// every handshake, so a rotated certificate is used by the next connection.
type CertificateFunc func() (*tls.Certificate, error)

// RootsFunc returns the trust roots to verify peers against now.
type RootsFunc func() (*x509.CertPool, error)

func checkCipher(cs tls.ConnectionState) error {
	if cs.Version != tls.VersionTLS13 {
		return fmt.Errorf("TLS version %x, want TLS 1.3", cs.Version)
	}
	if cs.CipherSuite != tls.TLS_AES_128_GCM_SHA256 && cs.CipherSuite != tls.TLS_AES_256_GCM_SHA384 {
		return fmt.Errorf("cipher suite %s, want AES-GCM", tls.CipherSuiteName(cs.CipherSuite))
	}
	return nil
}

// serverTLS builds the server's TLS config; peer receives the client identity.
func serverTLS(cert CertificateFunc, roots RootsFunc, trustDomain string, peer *identity.Identity) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequireAnyClientCert, // verified in VerifyConnection
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkCipher(cs); err != nil {
				return err
			}
			pool, err := roots()
			if err != nil {
				return fmt.Errorf("load trust roots: %w", err)
			}
			id, err := identity.VerifyChain(cs.PeerCertificates, pool, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, time.Time{})
			if err != nil {
				return fmt.Errorf("verify client: %w", err)
			}
			if id.TrustDomain != trustDomain {
				return fmt.Errorf("verify client: identity %s is not in trust domain %q", id, trustDomain)
			}
			*peer = id
			return nil
		},
	}
}

// ErrServerIdentity is wrapped when the server's certificate carries none of
// the expected identities.
var ErrServerIdentity = errors.New("server identity not expected")

// clientTLS builds the client's TLS config. No SNI is sent (ServerName is
// empty); the server chain and identity are checked in VerifyConnection.
func clientTLS(cert CertificateFunc, roots RootsFunc, want []identity.Identity, peer *identity.Identity) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		SessionTicketsDisabled: true,
		InsecureSkipVerify:     true, // replaced by VerifyConnection below: no host names in the mesh
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkCipher(cs); err != nil {
				return err
			}
			pool, err := roots()
			if err != nil {
				return fmt.Errorf("load trust roots: %w", err)
			}
			id, err := identity.VerifyChain(cs.PeerCertificates, pool, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, time.Time{})
			if err != nil {
				return fmt.Errorf("verify server: %w", err)
			}
			if !slices.Contains(want, id) {
				return fmt.Errorf("verify server: %w: got %s, want one of %v", ErrServerIdentity, id, want)
			}
			*peer = id
			return nil
		},
	}
}
