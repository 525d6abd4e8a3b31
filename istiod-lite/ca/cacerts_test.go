package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCACertsChains(t *testing.T) {
	root := makeCA(t, caSpec{name: "root"})
	inter1 := makeCA(t, caSpec{name: "intermediate 1", parent: &root})
	inter2 := makeCA(t, caSpec{name: "intermediate 2", parent: &inter1})
	tests := []struct {
		name      string
		m         PluginCerts
		wantChain []testCA // after the leaf
	}{
		{
			name:      "root signs directly",
			m:         PluginCerts{CACert: root.certPEM(), CAKey: root.keyPEM(t), RootCert: root.certPEM(), CertChain: root.certPEM()},
			wantChain: []testCA{root},
		},
		{
			name:      "root signs directly, no cert-chain.pem",
			m:         PluginCerts{CACert: root.certPEM(), CAKey: root.keyPEM(t), RootCert: root.certPEM()},
			wantChain: []testCA{root},
		},
		{
			name:      "intermediate, cert-chain.pem with root (Istio's layout)",
			m:         PluginCerts{CACert: inter1.certPEM(), CAKey: inter1.keyPEM(t), RootCert: root.certPEM(), CertChain: concatPEM(inter1.certPEM(), root.certPEM())},
			wantChain: []testCA{inter1, root},
		},
		{
			name:      "intermediate, cert-chain.pem without root",
			m:         PluginCerts{CACert: inter1.certPEM(), CAKey: inter1.keyPEM(t), RootCert: root.certPEM(), CertChain: inter1.certPEM()},
			wantChain: []testCA{inter1, root},
		},
		{
			name:      "intermediate, no cert-chain.pem",
			m:         PluginCerts{CACert: inter1.certPEM(), CAKey: inter1.keyPEM(t), RootCert: root.certPEM()},
			wantChain: []testCA{inter1, root},
		},
		{
			name:      "two intermediates",
			m:         PluginCerts{CACert: inter2.certPEM(), CAKey: inter2.keyPEM(t), RootCert: root.certPEM(), CertChain: concatPEM(inter2.certPEM(), inter1.certPEM(), root.certPEM())},
			wantChain: []testCA{inter2, inter1, root},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewFromPluginCerts("cluster.local", tt.m)
			if err != nil {
				t.Fatalf("NewFromPluginCerts: %v", err)
			}
			if got, want := string(a.RootPEM()), string(root.certPEM()); got != want {
				t.Errorf("RootPEM: got %q, want %q", got, want)
			}
			certs := parseChain(t, mustSign(t, a, 0))
			if got, want := len(certs), 1+len(tt.wantChain); got != want {
				t.Fatalf("chain: got %d certificates, want %d", got, want)
			}
			for i, w := range tt.wantChain {
				if !certs[1+i].Equal(w.cert) {
					t.Errorf("chain[%d]: got %s, want %s", 1+i, certs[1+i].Subject, w.cert.Subject)
				}
			}
			verifyChain(t, certs, root.certPEM())
			checkLeaf(t, certs[0], testID)
		})
	}
}

func TestCACertsRSAKey(t *testing.T) {
	// Istio's own tooling makes RSA CAs; they must load and sign.
	rsaKey := mustRSA(t, 2048)
	root := makeCA(t, caSpec{name: "rsa root", key: rsaKey})
	der := x509.MarshalPKCS1PrivateKey(rsaKey)
	a, err := NewFromPluginCerts("cluster.local", PluginCerts{
		CACert: root.certPEM(), RootCert: root.certPEM(),
		CAKey: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}),
	})
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, parseChain(t, mustSign(t, a, 0)), root.certPEM())
}

func TestCACertsRefused(t *testing.T) {
	root := makeCA(t, caSpec{name: "root"})
	inter := makeCA(t, caSpec{name: "intermediate", parent: &root})
	otherRoot := makeCA(t, caSpec{name: "other root"})
	expired := makeCA(t, caSpec{name: "expired intermediate", parent: &root, notAfter: time.Now().Add(-time.Minute)})
	leafLike := makeCA(t, caSpec{name: "not a CA", parent: &root, notCA: true})
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	edPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER})
	good := PluginCerts{CACert: inter.certPEM(), CAKey: inter.keyPEM(t), RootCert: root.certPEM(), CertChain: concatPEM(inter.certPEM(), root.certPEM())}
	with := func(f func(*PluginCerts)) PluginCerts { m := good; f(&m); return m }

	tests := []struct {
		name string
		m    PluginCerts
		want []string // substrings of the error: the key at fault, and the advice
	}{
		{name: "no ca-cert.pem", m: with(func(m *PluginCerts) { m.CACert = nil }), want: []string{"ca-cert.pem: missing"}},
		{name: "ca-cert.pem not PEM", m: with(func(m *PluginCerts) { m.CACert = []byte("junk") }), want: []string{"ca-cert.pem: no PEM CERTIFICATE"}},
		{name: "ca-cert.pem holds a key", m: with(func(m *PluginCerts) { m.CACert = inter.keyPEM(t) }), want: []string{"ca-cert.pem", `"PRIVATE KEY"`}},
		{name: "ca-cert.pem holds two", m: with(func(m *PluginCerts) { m.CACert = concatPEM(inter.certPEM(), root.certPEM()) }), want: []string{"ca-cert.pem: holds 2", "cert-chain.pem"}},
		{name: "ca-cert.pem not a CA", m: with(func(m *PluginCerts) { m.CACert, m.CAKey, m.CertChain = leafLike.certPEM(), leafLike.keyPEM(t), nil }), want: []string{"ca-cert.pem", "not a CA", "CA:TRUE"}},
		{name: "ca-cert.pem expired", m: with(func(m *PluginCerts) { m.CACert, m.CAKey, m.CertChain = expired.certPEM(), expired.keyPEM(t), nil }), want: []string{"ca-cert.pem", "expired", "rotate"}},
		{name: "no ca-key.pem", m: with(func(m *PluginCerts) { m.CAKey = nil }), want: []string{"ca-key.pem: missing"}},
		{name: "ca-key.pem of another certificate", m: with(func(m *PluginCerts) { m.CAKey = root.keyPEM(t) }), want: []string{"ca-key.pem: key does not match", "private key of ca-cert.pem"}},
		{name: "ca-key.pem not PEM", m: with(func(m *PluginCerts) { m.CAKey = []byte("junk") }), want: []string{"ca-key.pem: no PEM block"}},
		{name: "ca-key.pem Ed25519", m: with(func(m *PluginCerts) { m.CAKey = edPEM }), want: []string{"ca-key.pem", "Ed25519"}},
		{name: "ca-key.pem encrypted or unknown", m: with(func(m *PluginCerts) {
			m.CAKey = pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}})
		}), want: []string{"ca-key.pem", "ENCRYPTED PRIVATE KEY", "unencrypted"}},
		{name: "no root-cert.pem", m: with(func(m *PluginCerts) { m.RootCert = nil }), want: []string{"root-cert.pem: missing"}},
		{name: "root-cert.pem is another root", m: with(func(m *PluginCerts) { m.RootCert, m.CertChain = otherRoot.certPEM(), inter.certPEM() }), want: []string{"root-cert.pem", "put the root that issued it"}},
		{name: "cert-chain.pem starts elsewhere", m: with(func(m *PluginCerts) { m.CertChain = root.certPEM() }), want: []string{"cert-chain.pem: first certificate", "list ca-cert.pem first"}},
		{name: "cert-chain.pem with root in the middle", m: with(func(m *PluginCerts) { m.CertChain = concatPEM(inter.certPEM(), root.certPEM(), otherRoot.certPEM()) }), want: []string{"cert-chain.pem", "may only come last"}},
		{name: "cert-chain.pem wrong intermediate", m: with(func(m *PluginCerts) { m.CertChain = concatPEM(inter.certPEM(), otherRoot.certPEM()) }), want: []string{"cert-chain.pem: certificate 1", "not signed by certificate 2"}},
		{name: "bad trust domain", m: good, want: []string{"trust domain"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			td := "cluster.local"
			if tt.name == "bad trust domain" {
				td = "UPPER case"
			}
			a, err := NewFromPluginCerts(td, tt.m)
			if err == nil {
				t.Fatalf("NewFromPluginCerts: got an Authority (root %q), want an error", a.RootPEM())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error: got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestReadPluginCertsDir(t *testing.T) {
	root := makeCA(t, caSpec{name: "root"})
	dir := t.TempDir()
	for name, b := range map[string][]byte{CACertKey: root.certPEM(), CAKeyKey: root.keyPEM(t), RootCertKey: root.certPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err := ReadPluginCertsDir(dir)
	if err != nil {
		t.Fatalf("ReadPluginCertsDir without cert-chain.pem: %v", err)
	}
	if _, err := NewFromPluginCerts("cluster.local", m); err != nil {
		t.Fatalf("NewFromPluginCerts: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, CAKeyKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPluginCertsDir(dir); err == nil || !strings.Contains(err.Error(), CAKeyKey) {
		t.Errorf("ReadPluginCertsDir without ca-key.pem: got %v, want an error naming %s", err, CAKeyKey)
	}
}
