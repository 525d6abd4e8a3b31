package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// minRSABits is the smallest RSA key a workload certificate may carry.
const minRSABits = 2048

// parseCSR decodes the first PEM block of csrPEM as a PKCS #10 request, checks its
// self-signature (proof that the requester holds the private key) and that its key is one
// the mesh accepts: ECDSA P-256 or P-384, or RSA of at least 2048 bits. Errors wrap
// ErrInvalidCSR.
func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) == 0 {
		return nil, fmt.Errorf("%w: empty; send a PEM \"CERTIFICATE REQUEST\" in the csr field", ErrInvalidCSR)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found; send a PEM \"CERTIFICATE REQUEST\"", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block is %q; want \"CERTIFICATE REQUEST\"", ErrInvalidCSR, block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify with the request's own key: %w", ErrInvalidCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s not accepted; use P-256 or P-384", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("%w: RSA key has %d bits; use at least %d (or ECDSA P-256)", ErrInvalidCSR, bits, minRSABits)
		}
	default:
		return nil, fmt.Errorf("%w: public key type %T not accepted; use ECDSA P-256/P-384 or RSA >= %d bits", ErrInvalidCSR, k, minRSABits)
	}
	return csr, nil
}
