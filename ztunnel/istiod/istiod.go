// Package istiod holds what ztunnel's two clients of istiod-lite (xDS and the CA) share: the
// gRPC transport to it and the service-account token they present.
package istiod

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Transport returns the gRPC transport to istiod-lite at address: plaintext (its 15010 port,
// local use), or TLS verified against the PEM roots in rootCAFile for serverName (default:
// address's host).
func Transport(address string, plaintext bool, rootCAFile, serverName string) (grpc.DialOption, error) {
	if plaintext {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
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
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})), nil
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
