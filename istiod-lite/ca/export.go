package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"strings"
	"time"
)

// Export returns the Authority's signing material in the cacerts layout, so a self-signed root
// can be stored (in istiod-lite's own Secret) and the same root used after a restart; without
// that, every certificate issued before the restart would stop being trusted.
func (a *Authority) Export() (PluginCerts, error) {
	key, err := x509.MarshalPKCS8PrivateKey(a.signer)
	if err != nil {
		return PluginCerts{}, fmt.Errorf("encoding the CA key: %w", err)
	}
	return PluginCerts{
		CACert:    []byte(encodeCert(a.cert)),
		CAKey:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
		RootCert:  a.RootPEM(),
		CertChain: []byte(strings.Join(a.issuerChain, "")),
	}, nil
}

// IssueServing makes a TLS serving certificate for istiod-lite itself, for the given DNS names,
// with a fresh key, valid for ttl (bounded by the CA's own expiry). Clients verify it with
// the root that PublishRoot distributes.
func (a *Authority) IssueServing(dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating serving key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, crypto.PublicKey(key.Public()), a.signer)
	if err != nil {
		return nil, fmt.Errorf("signing serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing serving certificate: %w", err)
	}
	chain := [][]byte{der}
	for _, p := range a.issuerChain {
		if b, _ := pem.Decode([]byte(p)); b != nil {
			chain = append(chain, b.Bytes)
		}
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}
