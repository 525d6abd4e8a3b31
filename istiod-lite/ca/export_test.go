package ca

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestExportRoundTripAndServing(t *testing.T) {
	a, err := NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := a.Export()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewFromPluginCerts("cluster.local", pc)
	if err != nil {
		t.Fatalf("loading exported material: %v", err)
	}
	if string(b.RootPEM()) != string(a.RootPEM()) {
		t.Error("the reloaded authority has another root")
	}
	cert, err := b.IssueServing([]string{"istiod.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.RootPEM())
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "istiod.istio-system.svc", Roots: roots}); err != nil {
		t.Errorf("serving certificate does not verify with the original root: %v", err)
	}
}
