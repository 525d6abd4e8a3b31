package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// TestClientHello checks what the client offers: TLS 1.3 only, ALPN h2, no
// SNI, no session resumption.
func TestClientHello(t *testing.T) {
	ca := newCA(t)
	scert := ca.issue(t, serverID)
	hellos := make(chan *tls.ClientHelloInfo, 2)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hellos <- h
			return nil, nil
		},
		Certificates: []tls.Certificate{*scert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{"h2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resumed := make(chan bool, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				resumed <- tc.ConnectionState().DidResume
			}
			c.Close()
		}
	}()
	ccert := ca.issue(t, clientID)
	var peer identity.Identity
	cfg := clientTLS(func() (*tls.Certificate, error) { return ccert, nil },
		func() (*x509.CertPool, error) { return ca.pool, nil }, []identity.Identity{mustID(t, serverID)}, &peer)
	for range 2 {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		cs := c.ConnectionState()
		if cs.Version != tls.VersionTLS13 || (cs.CipherSuite != tls.TLS_AES_128_GCM_SHA256 && cs.CipherSuite != tls.TLS_AES_256_GCM_SHA384) {
			t.Errorf("negotiated %x %s, want TLS 1.3 with AES-GCM", cs.Version, tls.CipherSuiteName(cs.CipherSuite))
		}
		c.Close()
		h := <-hellos
		if h.ServerName != "" {
			t.Errorf("SNI: got %q, want none", h.ServerName)
		}
		if !slices.Equal(h.SupportedProtos, []string{"h2"}) {
			t.Errorf("ALPN: got %q, want [h2]", h.SupportedProtos)
		}
		if !slices.Equal(h.SupportedVersions, []uint16{tls.VersionTLS13}) {
			t.Errorf("versions: got %x, want only TLS 1.3", h.SupportedVersions)
		}
		if <-resumed {
			t.Error("session resumed")
		}
	}
	if peer.String() != serverID {
		t.Errorf("peer: got %v, want %s", peer, serverID)
	}
}

// TestServerRefusesOldTLS: a TLS 1.2 client does not get in.
func TestServerRefusesOldTLS(t *testing.T) {
	e := newEnv(t, echo)
	ccert, _ := e.src.Certificate()
	c, err := tls.Dial("tcp", e.addr.String(), &tls.Config{
		InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*ccert},
	})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.2 handshake succeeded")
	}
	// And the pool still works with a custom DialContext.
	src := *e.src
	var dialed netip.AddrPort
	src.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = netip.MustParseAddrPort(addr)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	s, err := e.pool.Dial(context.Background(), &src, e.target(80))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if dialed != e.addr {
		t.Errorf("DialContext got %v, want %v", dialed, e.addr)
	}
}
