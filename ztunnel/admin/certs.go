package admin

import (
	"crypto/x509"
	"time"
)

// Certificate describes one certificate of a chain for the certificates section of
// /config_dump.
type Certificate struct {
	Subject      string    `json:"subject"`
	Issuer       string    `json:"issuer"`
	URIs         []string  `json:"uris,omitempty"`
	SerialNumber string    `json:"serialNumber"`
	NotBefore    time.Time `json:"validFrom"`
	NotAfter     time.Time `json:"expirationTime"`
	// ExpiresIn is the time left at dump time, rounded to the second ("-3s" once expired).
	ExpiresIn string `json:"expiresIn"`
}

// DescribeChain describes chain (leaf first) as of now, for a [Dumper] of certificates.
func DescribeChain(chain []*x509.Certificate, now time.Time) []Certificate {
	out := make([]Certificate, 0, len(chain))
	for _, c := range chain {
		d := Certificate{
			Subject:      c.Subject.String(),
			Issuer:       c.Issuer.String(),
			SerialNumber: c.SerialNumber.Text(16),
			NotBefore:    c.NotBefore.UTC(),
			NotAfter:     c.NotAfter.UTC(),
			ExpiresIn:    c.NotAfter.Sub(now).Round(time.Second).String(),
		}
		for _, u := range c.URIs {
			d.URIs = append(d.URIs, u.String())
		}
		out = append(out, d)
	}
	return out
}
