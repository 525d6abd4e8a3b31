package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// noMesh knows no workloads: the test below opens listeners and connections only.
type noMesh struct{}

func (noMesh) FindWorkload(context.Context, string, netip.Addr) (*state.Workload, error) {
	return nil, state.ErrNotFound
}
func (noMesh) ServiceByVIP(string, netip.Addr, uint16) (*state.Service, state.Port, bool) {
	return nil, state.Port{}, false
}
func (noMesh) PickEndpoint(context.Context, *state.Service, uint16) (state.Endpoint, error) {
	return state.Endpoint{}, state.ErrNotFound
}
func (noMesh) Authorize(*state.Workload, *authz.Conn) authz.Decision { return authz.Decision{} }

type noCerts struct{}

func (noCerts) Get(context.Context, identity.Identity) (*tls.Certificate, error) {
	return nil, errors.New("no certificates in this test")
}
func (noCerts) Roots() *x509.CertPool { return x509.NewCertPool() }

// TestAddPodAgain checks the node agent's replay after its restart: adding a pod that is
// served already, with the same network namespace, keeps it served as it is (its listeners
// hold the ports; reopening them failed with "address already in use" and the pod was
// dropped), while a new namespace for the pod (a new sandbox) replaces it.
func TestAddPodAgain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for network namespaces; CI runs as root")
	}
	first := testutil.NewNetNS(t, "pod")
	first.Run(t, "ip", "link", "set", "lo", "up")
	second := testutil.NewNetNS(t, "new sandbox")
	second.Run(t, "ip", "link", "set", "lo", "up")

	pool := hbone.NewPool(hbone.PoolConfig{})
	defer pool.Close()
	px, err := New(Config{Mesh: noMesh{}, Certs: noCerts{}, Tunnel: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Stop(ctx)
	}()
	open := func(n *testutil.NetNS) *netns.Handle {
		h, err := netns.Open(n.Path)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	listening := func(n *testutil.NetNS) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := n.Handle.DialContext(ctx, "tcp", "127.0.0.1:15008")
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	served := func() *Pod {
		px.mu.Lock()
		defer px.mu.Unlock()
		return px.pods["uid-1"]
	}
	pod := PodInfo{UID: "uid-1", Name: "web", Namespace: "shop", Identity: identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}}
	ctx := context.Background()

	if err := px.AddPod(ctx, pod, open(first)); err != nil {
		t.Fatal(err)
	}
	kept := served()
	if err := px.AddPod(ctx, pod, open(first)); err != nil {
		t.Fatalf("adding the pod again with the same namespace: %v; want it kept", err)
	}
	if got := served(); got != kept {
		t.Errorf("adding the pod again with the same namespace replaced it; want the served pod kept (its connections with it)")
	}
	if !listening(first) {
		t.Errorf("after the repeated add nothing listens on 15008 in the pod's namespace")
	}

	if err := px.AddPod(ctx, pod, open(second)); err != nil {
		t.Fatalf("adding the pod with a new namespace: %v", err)
	}
	if served() == kept {
		t.Errorf("adding the pod with a new namespace kept the old one; want it replaced")
	}
	if !listening(second) {
		t.Errorf("nothing listens on 15008 in the pod's new namespace")
	}
	if listening(first) {
		t.Errorf("the pod's old namespace still has ztunnel's listener")
	}
}

// TestRollingUpdateOverlap checks the hand-over of a rolling update, where the node's new
// ztunnel is given every enrolled pod while the old one still serves them: the new one opens
// its listeners next to the old one's, and keeps the pod served once the old one has stopped.
func TestRollingUpdateOverlap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for network namespaces; CI runs as root")
	}
	n := testutil.NewNetNS(t, "pod")
	n.Run(t, "ip", "link", "set", "lo", "up")
	newProxy := func() *Proxy {
		pool := hbone.NewPool(hbone.PoolConfig{})
		t.Cleanup(func() { pool.Close() })
		px, err := New(Config{Mesh: noMesh{}, Certs: noCerts{}, Tunnel: pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopProxy(px) })
		return px
	}
	pod := PodInfo{UID: "uid-1", Name: "web", Namespace: "shop", Identity: identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}}
	ctx := context.Background()
	add := func(px *Proxy, which string) {
		h, err := netns.Open(n.Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := px.AddPod(ctx, pod, h); err != nil {
			t.Fatalf("adding the pod to the %s ztunnel: %v", which, err)
		}
	}
	old, next := newProxy(), newProxy()
	add(old, "old")
	add(next, "new")
	stopProxy(old)
	for _, port := range []int{OutboundPort, InboundPort, HBONEPort} {
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := n.Handle.DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
		}
		// The new ztunnel may reset a connection it accepted (on 15001 and 15006 one to
		// ztunnel's own port, which this test's empty mesh cannot route) before the dial
		// returns; with nobody listening the dial is refused.
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after the old ztunnel stopped: %s in the pod: %v; want the new ztunnel's listener", addr, err)
		}
	}
}

func stopProxy(px *Proxy) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	px.Stop(ctx)
}
