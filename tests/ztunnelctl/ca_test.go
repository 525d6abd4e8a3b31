package ztunnelctl

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
)

var (
	ztunnelID = identity.Identity{TrustDomain: "cluster.local", Namespace: "istio-system", ServiceAccount: "ztunnel"}
	webID     = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	dbID      = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "db"}
	lateID    = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "late"}
)

// startCA runs istiod-lite's CA over TLS. The fake API server knows one token, ztunnel's on
// node-1, and ztunnel's pod, two pods of namespace shop (web-1 on node-1, db-2 on node-2) and
// the extra pods given.
func startCA(t *testing.T, authority *ca.Authority, extra ...*corev1.Pod) (*tlsServer, *fake.Clientset) {
	t.Helper()
	objects := []runtime.Object{
		pod("istio-system", "ztunnel-n1", "node-1", "10.250.0.11", "ztunnel", nil),
		pod("shop", "web-1", "node-1", "10.244.1.5", "web", nil),
		pod("shop", "db-2", "node-2", "10.244.2.6", "db", nil),
	}
	for _, p := range extra {
		objects = append(objects, p)
	}
	client := fake.NewClientset(objects...)
	client.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if tr.Spec.Token != "ztunnel-token" {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
			return true, tr, nil
		}
		tr.Status = authnv1.TokenReviewStatus{
			Authenticated: true,
			Audiences:     tr.Spec.Audiences,
			User: authnv1.UserInfo{Username: "system:serviceaccount:istio-system:ztunnel", Extra: map[string]authnv1.ExtraValue{
				ca.ExtraPodName: {"ztunnel-n1"}, ca.ExtraPodUID: {"uid-istio-system-ztunnel-n1"}, ca.ExtraNodeName: {"node-1"},
			}},
		}
		return true, tr, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(client, 0)
	pods, err := ca.NewInformerPodLister(factory.Core().V1().Pods().Informer())
	must(t, err)
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer %v did not sync", typ)
		}
	}
	srv, err := ca.New(ca.Config{}, authority, client, pods)
	must(t, err)
	return newTLSServer(t, authority, "127.0.0.1:0", func(g *grpc.Server) { srv.Register(g) }), client
}

func startManager(t *testing.T, s *tlsServer, cfg certs.Config) *certs.Manager {
	t.Helper()
	cfg.Address, cfg.RootCAFile, cfg.ServerName = s.addr, s.rootFile, "istiod.istio-system.svc"
	cfg.TokenFile, cfg.Own = writeToken(t, "ztunnel-token\n"), ztunnelID
	m, err := certs.New(cfg)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("certs Run: %v", err)
		}
	})
	return m
}

// TestCertificatesFromIstiodLiteCA fetches certificates from istiod-lite's real CA: ztunnel's
// own, a local pod's by impersonation, a refusal for an identity with no pod on the node, a
// retry that succeeds once the pod appears, and a refresh at half of a short lifetime.
func TestCertificatesFromIstiodLiteCA(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	authority, err := ca.NewSelfSigned("cluster.local")
	must(t, err)
	s, client := startCA(t, authority)
	m := startManager(t, s, certs.Config{TTL: 2 * time.Second, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx := ctxT(t)
	caRoots := x509.NewCertPool()
	if !caRoots.AppendCertsFromPEM(authority.RootPEM()) {
		t.Fatal("authority root: no PEM")
	}

	for _, id := range []identity.Identity{ztunnelID, webID} {
		m.Add(id)
		c, err := m.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get(%s): %v", id, err)
		}
		var chain []*x509.Certificate
		for _, der := range c.Certificate {
			cert, err := x509.ParseCertificate(der)
			must(t, err)
			chain = append(chain, cert)
		}
		for name, roots := range map[string]*x509.CertPool{"the CA's root": caRoots, "Roots()": m.Roots()} {
			got, err := identity.VerifyChain(chain, roots, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, time.Time{})
			if err != nil || got != id {
				t.Errorf("certificate of %s against %s: got %v, %v", id, name, got, err)
			}
		}
		if life := time.Until(c.Leaf.NotAfter); life > 3*time.Second {
			t.Errorf("certificate of %s lives %v, want the 2 s requested", id, life)
		}
	}

	t.Run("no pod on the node is refused", func(t *testing.T) {
		m.Add(dbID)
		defer m.Remove(dbID)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := m.Get(short, dbID)
		if err == nil || !strings.Contains(err.Error(), "has no pod on node node-1") {
			t.Errorf("Get(%s): got %v, want the CA's refusal", dbID, err)
		}
	})

	t.Run("retry succeeds once the pod appears", func(t *testing.T) {
		m.Add(lateID)
		waitFor(t, "a refused fetch", func() bool {
			for _, st := range m.Status() {
				if st.Identity == lateID.String() && st.Failures > 0 {
					return true
				}
			}
			return false
		})
		_, err := client.CoreV1().Pods("shop").Create(ctx, pod("shop", "late-1", "node-1", "10.244.1.9", "late", nil), metav1.CreateOptions{})
		must(t, err)
		c, err := m.Get(ctx, lateID)
		if err != nil {
			t.Fatalf("Get(%s) after the pod appeared: %v", lateID, err)
		}
		if got, err := identity.FromCertificate(c.Leaf); err != nil || got != lateID {
			t.Errorf("certificate: got %v, %v", got, err)
		}
	})

	t.Run("refresh at half life", func(t *testing.T) {
		first, err := m.Get(ctx, webID)
		must(t, err)
		waitFor(t, "a refreshed certificate", func() bool {
			c, err := m.Get(ctx, webID)
			return err == nil && c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
		})
		c, _ := m.Get(ctx, webID)
		if !c.Leaf.NotAfter.After(first.Leaf.NotAfter) {
			t.Errorf("refreshed certificate expires %v, not after the first's %v", c.Leaf.NotAfter, first.Leaf.NotAfter)
		}
	})
}
