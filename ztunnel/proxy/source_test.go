package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// lateCerts is a certificate manager whose first certificate has not arrived yet: until
// ready is closed, Get waits and Roots is empty, as after ztunnel's start.
type lateCerts struct {
	ready chan struct{}
	roots *x509.CertPool
}

func (c *lateCerts) Get(ctx context.Context, _ identity.Identity) (*tls.Certificate, error) {
	select {
	case <-c.ready:
		return &tls.Certificate{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *lateCerts) Roots() *x509.CertPool {
	select {
	case <-c.ready:
		return c.roots
	default:
		return x509.NewCertPool()
	}
}

// TestSourceRootsWaitForTheCertificate: a client checks the server's certificate before it
// sends its own, so the roots it checks against must wait for the pod's certificate (which
// brings them); a new ztunnel's first connections failed with "certificate signed by unknown
// authority". The wait is bounded by the handshake timeout.
func TestSourceRootsWaitForTheCertificate(t *testing.T) {
	certs := &lateCerts{ready: make(chan struct{}), roots: x509.NewCertPool()}
	pool := hbone.NewPool(hbone.PoolConfig{})
	defer pool.Close()
	px, err := New(Config{Mesh: noMesh{}, Certs: certs, Tunnel: pool, HandshakeTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &Pod{PodInfo: PodInfo{UID: "uid-1", Name: "web", Namespace: "shop",
		Identity: identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}}, ctx: ctx}
	src := px.source(p)

	// Never ready within the handshake timeout: an error, not an empty pool.
	if roots, err := src.Roots(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("roots before any certificate: %v, %v; want the handshake timeout's error", roots, err)
	}

	got := make(chan *x509.CertPool, 1)
	go func() {
		roots, err := src.Roots()
		if err != nil {
			t.Errorf("roots once the certificate arrives: %v", err)
		}
		got <- roots
	}()
	select {
	case r := <-got:
		t.Fatalf("roots returned %v before the pod's certificate arrived", r)
	case <-time.After(50 * time.Millisecond):
	}
	close(certs.ready)
	if r := <-got; r != certs.roots {
		t.Errorf("roots once the certificate arrived: got another pool than the manager's")
	}
}
