package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Identity is a workload's SPIFFE identity. The zero value is "no identity".
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid SPIFFE identity")

const scheme = "spiffe://"

// Parse parses spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
// Each part must be non-empty and free of '/', and the trust domain follows the
// SPIFFE character set (lowercase letters, digits, '.', '-', '_'). Errors name the
// input and wrap ErrInvalid.
func Parse(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return Identity{}, fmt.Errorf("parse identity %q: %w: want prefix %q", s, ErrInvalid, scheme)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("parse identity %q: %w: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", s, ErrInvalid)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	if err := checkTrustDomain(id.TrustDomain); err != nil {
		return Identity{}, fmt.Errorf("parse identity %q: %w: %s", s, ErrInvalid, err)
	}
	for _, p := range []struct{ name, v string }{{"namespace", id.Namespace}, {"service account", id.ServiceAccount}} {
		if err := checkSegment(p.v); err != nil {
			return Identity{}, fmt.Errorf("parse identity %q: %w: %s %s", s, ErrInvalid, p.name, err)
		}
	}
	return id, nil
}

func checkTrustDomain(td string) error {
	if td == "" {
		return errors.New("empty trust domain")
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("trust domain %q has character %q; allowed are a-z 0-9 . - _", td, c)
		}
	}
	return nil
}

// checkSegment applies SPIFFE's path segment rules: not empty, not "." or "..",
// letters, digits and . - _ only.
func checkSegment(v string) error {
	if v == "" {
		return errors.New("is empty")
	}
	if v == "." || v == ".." {
		return fmt.Errorf("%q is not allowed", v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%q has character %q; allowed are letters, digits and . - _", v, c)
		}
	}
	return nil
}

// String returns the URI form, or "" for the zero Identity.
func (id Identity) String() string {
	if id == (Identity{}) {
		return ""
	}
	return scheme + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// IsZero reports whether id is the zero value (no identity).
func (id Identity) IsZero() bool { return id == (Identity{}) }

// FromCertificate returns the identity in cert's URI SAN. The certificate must
// carry exactly one URI SAN, and it must be a valid SPIFFE workload identity.
func FromCertificate(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("read identity: no certificate")
	}
	if len(cert.URIs) != 1 {
		return Identity{}, fmt.Errorf("read identity of certificate %q: has %d URI SANs, want exactly 1", cert.Subject, len(cert.URIs))
	}
	id, err := Parse(cert.URIs[0].String())
	if err != nil {
		return Identity{}, fmt.Errorf("read identity of certificate %q: %w", cert.Subject, err)
	}
	return id, nil
}
