package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The keys of Istio's cacerts secret (and the file names when it is mounted).
const (
	CACertKey    = "ca-cert.pem"
	CAKeyKey     = "ca-key.pem"
	RootCertKey  = "root-cert.pem"
	CertChainKey = "cert-chain.pem"
)

// PluginCerts is a user-provided ("plugged-in") CA in the layout of Istio's cacerts secret.
type PluginCerts struct {
	// CACert is the certificate leaves are signed with: the root itself, or an intermediate.
	CACert []byte
	// CAKey is CACert's private key (PKCS #8, SEC 1 "EC PRIVATE KEY" or PKCS #1).
	CAKey []byte
	// RootCert holds the trust roots; several during a root rotation.
	RootCert []byte
	// CertChain is CACert followed by its intermediates up to (optionally including) the
	// root. It may be empty when CACert is the root or is signed directly by it.
	CertChain []byte
}

// PluginCertsFromSecretData picks the cacerts keys out of a Secret's data.
func PluginCertsFromSecretData(data map[string][]byte) PluginCerts {
	return PluginCerts{
		CACert:    data[CACertKey],
		CAKey:     data[CAKeyKey],
		RootCert:  data[RootCertKey],
		CertChain: data[CertChainKey],
	}
}

// ReadPluginCertsDir reads the cacerts files from dir (the secret mounted as a volume).
// cert-chain.pem may be absent; the other three must exist.
func ReadPluginCertsDir(dir string) (PluginCerts, error) {
	data := map[string][]byte{}
	for _, k := range []string{CACertKey, CAKeyKey, RootCertKey, CertChainKey} {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if errors.Is(err, fs.ErrNotExist) && k == CertChainKey {
			continue
		}
		if err != nil {
			return PluginCerts{}, fmt.Errorf("reading cacerts: %w", err)
		}
		data[k] = b
	}
	return PluginCertsFromSecretData(data), nil
}

// NewFromPluginCerts makes an Authority that signs with a user-provided CA. It checks that
// ca-key.pem is ca-cert.pem's key, that ca-cert.pem is a currently valid CA certificate,
// and that cert-chain.pem leads from ca-cert.pem to a root in root-cert.pem, each certificate
// signed by the next. Errors name the key at fault and what to change.
func NewFromPluginCerts(trustDomain string, m PluginCerts, opts ...Option) (*Authority, error) {
	a, err := newAuthority(trustDomain, opts)
	if err != nil {
		return nil, err
	}
	now := a.now()

	caCerts, err := parseCerts(CACertKey, m.CACert)
	if err != nil {
		return nil, err
	}
	if len(caCerts) != 1 {
		return nil, fmt.Errorf("%s: holds %d certificates; put only the signing certificate there and its chain in %s", CACertKey, len(caCerts), CertChainKey)
	}
	cert := caCerts[0]
	if err := checkCA(CACertKey, cert, now); err != nil {
		return nil, err
	}

	signer, err := parseKey(m.CAKey)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(signer.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%s: key does not match the public key of %s (%s); put the private key of %s there",
			CAKeyKey, CACertKey, cert.Subject, CACertKey)
	}

	roots, err := parseCerts(RootCertKey, m.RootCert)
	if err != nil {
		return nil, err
	}
	for i, r := range roots {
		if err := checkCA(fmt.Sprintf("%s certificate %d", RootCertKey, i+1), r, now); err != nil {
			return nil, err
		}
	}

	chain, err := chainOf(cert, m.CertChain, roots)
	if err != nil {
		return nil, err
	}
	root, err := rootOf(chain[len(chain)-1], roots)
	if err != nil {
		return nil, err
	}
	// Belt and braces: the standard verifier must agree with the link-by-link check.
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s: does not verify to %s through %s: %w; provide the chain from %s up to the root",
			CACertKey, RootCertKey, CertChainKey, err, CACertKey)
	}

	a.signer = signer
	a.cert = cert
	full := append(chain, root)
	if root.Equal(cert) {
		full = chain // ca-cert.pem is the root itself
	}
	a.notAfter = full[0].NotAfter
	for _, c := range full {
		a.issuerChain = append(a.issuerChain, encodeCert(c))
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	var rootsPEM bytes.Buffer
	for _, r := range roots {
		rootsPEM.WriteString(encodeCert(r))
	}
	a.rootsPEM = rootsPEM.Bytes()
	return a, nil
}

// chainOf returns cert followed by its intermediates in order, without the root, from the
// contents of cert-chain.pem, checking that each certificate is signed by the next.
func chainOf(cert *x509.Certificate, certChainPEM []byte, roots []*x509.Certificate) ([]*x509.Certificate, error) {
	chain := []*x509.Certificate{cert}
	if len(bytes.TrimSpace(certChainPEM)) > 0 {
		listed, err := parseCerts(CertChainKey, certChainPEM)
		if err != nil {
			return nil, err
		}
		if !listed[0].Equal(cert) {
			return nil, fmt.Errorf("%s: first certificate is %s, not %s (%s); list %s first, then its intermediates up to the root",
				CertChainKey, listed[0].Subject, CACertKey, cert.Subject, CACertKey)
		}
		for i, c := range listed[1:] {
			if isRoot(c, roots) {
				if i != len(listed)-2 {
					return nil, fmt.Errorf("%s: root %s is certificate %d of %d; the root may only come last", CertChainKey, c.Subject, i+2, len(listed))
				}
				break
			}
			if err := checkCA(fmt.Sprintf("%s certificate %d", CertChainKey, i+2), c, time.Time{}); err != nil {
				return nil, err
			}
			chain = append(chain, c)
		}
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("%s: certificate %d (%s) is not signed by certificate %d (%s): %w; order %s from %s up to the root",
				CertChainKey, i+1, chain[i].Subject, i+2, chain[i+1].Subject, err, CertChainKey, CACertKey)
		}
	}
	return chain, nil
}

// rootOf returns the root in roots that signed last (or that last is).
func rootOf(last *x509.Certificate, roots []*x509.Certificate) (*x509.Certificate, error) {
	for _, r := range roots {
		if r.Equal(last) {
			return r, nil
		}
	}
	for _, r := range roots {
		if last.CheckSignatureFrom(r) == nil {
			return r, nil
		}
	}
	which := CACertKey
	if last.Subject.String() != "" {
		which = fmt.Sprintf("%s (%s)", which, last.Subject)
	}
	return nil, fmt.Errorf("%s: no certificate there signed the top of the chain from %s; put the root that issued it in %s, or complete %s with the missing intermediates",
		RootCertKey, which, RootCertKey, CertChainKey)
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

// checkCA reports why c cannot sign certificates; a zero now skips the validity period.
func checkCA(what string, c *x509.Certificate, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("%s: %s is not a CA certificate (basicConstraints CA:FALSE or absent); issue it with CA:TRUE and keyCertSign", what, c.Subject)
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s: %s lacks the keyCertSign key usage; reissue it with keyCertSign", what, c.Subject)
	}
	if now.IsZero() {
		return nil
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%s: %s is not valid before %s; check the clock or reissue it", what, c.Subject, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(c.NotAfter) {
		return fmt.Errorf("%s: %s expired at %s; rotate the CA", what, c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// parseCerts decodes every CERTIFICATE block of b; key names the cacerts key for errors.
func parseCerts(key string, b []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s: missing or empty; add it to the cacerts secret", key)
	}
	var certs []*x509.Certificate
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: holds a %q PEM block; only CERTIFICATE blocks belong there", key, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", key, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block found; it must hold PEM-encoded certificates", key)
	}
	return certs, nil
}

// parseKey decodes ca-key.pem: PKCS #8, SEC 1 or PKCS #1; ECDSA or RSA.
func parseKey(b []byte) (crypto.Signer, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s: missing or empty; add the CA's private key to the cacerts secret", CAKeyKey)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block found; it must hold a PEM private key", CAKeyKey)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: PEM block is %q; want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY (unencrypted)", CAKeyKey, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: parsing %s: %w", CAKeyKey, block.Type, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("%s: RSA key has %d bits; use at least %d", CAKeyKey, bits, minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return nil, fmt.Errorf("%s: Ed25519 keys are not supported by the mesh's peers; use ECDSA P-256 or RSA", CAKeyKey)
	default:
		return nil, fmt.Errorf("%s: key type %T not supported; use ECDSA P-256 or RSA", CAKeyKey, key)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
