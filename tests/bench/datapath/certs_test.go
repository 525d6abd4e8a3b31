package datapath

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// nginxCerts is a throwaway PKI for the nginx pair: a CA, the inbound hop's server certificate
// (DNS name nginxInName) and the outbound hop's client certificate, all PEM.
type nginxCerts struct {
	CA              []byte
	InCert, InKey   []byte
	OutCert, OutKey []byte
	pool            *x509.CertPool
	outKeyPair      tls.Certificate
}

// nginxInName is the name the outbound hop checks in the inbound hop's certificate.
const nginxInName = "nginx-in.bench.local"

func newNginxCerts() (*nginxCerts, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ambit bench nginx CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, dns []string) ([]byte, []byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generating the key of %s: %w", cn, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			DNSNames:     dns,
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, fmt.Errorf("creating the certificate of %s: %w", cn, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, fmt.Errorf("encoding the key of %s: %w", cn, err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
	}
	certs := &nginxCerts{CA: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pool: x509.NewCertPool()}
	certs.pool.AddCert(ca)
	if certs.InCert, certs.InKey, err = leaf(2, nginxInName, x509.ExtKeyUsageServerAuth, []string{nginxInName}); err != nil {
		return nil, err
	}
	if certs.OutCert, certs.OutKey, err = leaf(3, "nginx-out", x509.ExtKeyUsageClientAuth, nil); err != nil {
		return nil, err
	}
	if certs.outKeyPair, err = tls.X509KeyPair(certs.OutCert, certs.OutKey); err != nil {
		return nil, fmt.Errorf("loading the outbound hop's key pair: %w", err)
	}
	return certs, nil
}

// clientConfig is a TLS 1.3 client of the inbound hop, with the outbound hop's client
// certificate when withCert.
func (n *nginxCerts) clientConfig(withCert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: n.pool, ServerName: nginxInName, MinVersion: tls.VersionTLS13}
	if withCert {
		cfg.Certificates = []tls.Certificate{n.outKeyPair}
	}
	return cfg
}
