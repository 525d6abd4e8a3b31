package ca

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"testing"
)

// FuzzParseCSR feeds untrusted CSR bytes (the csr field of a request) to the parser: it must
// not panic, and whatever it accepts carries a key the mesh allows.
func FuzzParseCSR(f *testing.F) {
	f.Add(csrFor(f, newP256(f)))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := parseCSR(b)
		if err != nil {
			return
		}
		switch k := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
		case *rsa.PublicKey:
			if k.N.BitLen() < minRSABits {
				t.Errorf("accepted an RSA key of %d bits", k.N.BitLen())
			}
		default:
			t.Errorf("accepted a %T key", k)
		}
	})
}

// FuzzParseWorkloadID feeds untrusted ImpersonatedIdentity values to the parser: whatever it
// accepts prints back to the same identity.
func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop", "spiffe://td/ns//sa/x",
		"spiffe://td/ns/a/sa/b/c", "SPIFFE://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b?x=1", "spiffe://td/ns/%2e/sa/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseWorkloadID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Errorf("parseWorkloadID(%q) = %+v, which prints as %q", s, id, id.String())
		}
		again, err := parseWorkloadID(id.String())
		if err != nil || again != id {
			t.Errorf("reparsing %q: got %+v, %v; want %+v", id.String(), again, err, id)
		}
	})
}
