// Package istiod holds what ztunnel's two clients of istiod-lite (xDS and the CA) share: the
// connection to it (gRPC over internal/grpcwire, not grpc-go: issue #4) and the
// service-account token they present.
package istiod

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
)

// UserAgent is the user-agent of ztunnel's calls to istiod-lite.
const UserAgent = "ambit-ztunnel"

// Dial returns a gRPC connection to istiod-lite at address (it connects on the first call):
// plaintext HTTP/2 (its 15010 port, local use), or TLS with ALPN h2 verified against the PEM
// roots in rootCAFile for serverName (default: address's host).
func Dial(address string, plaintext bool, rootCAFile, serverName string) (*grpcwire.Conn, error) {
	tlsConf, err := tlsConfig(address, plaintext, rootCAFile, serverName)
	if err != nil {
		return nil, err
	}
	c, err := grpcwire.New(address, grpcwire.Options{TLS: tlsConf, UserAgent: UserAgent})
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", address, err)
	}
	return c, nil
}

// tlsConfig is nil for plaintext.
func tlsConfig(address string, plaintext bool, rootCAFile, serverName string) (*tls.Config, error) {
	if plaintext {
		return nil, nil
	}
	if rootCAFile == "" {
		return nil, errors.New("no RootCAFile: set the roots that verify istiod-lite, or Plaintext for port 15010")
	}
	b, err := os.ReadFile(rootCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading root CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("root CA %s: no PEM certificate in it", rootCAFile)
	}
	if serverName == "" {
		if host, _, err := net.SplitHostPort(address); err == nil {
			serverName = host
		}
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
}

// Token reads the bearer token in path, "" when path is "". It is read on every use, so a
// rotated token is picked up.
func Token(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return t, nil
}
