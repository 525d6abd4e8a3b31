package ztunnelctl

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/model"
	ixds "github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	zxds "github.com/ambit-mesh/ambit/ztunnel/xds"
)

// countingSink passes updates to the State and counts the resources each type received.
type countingSink struct {
	st *state.State
	mu sync.Mutex
	// set counts resources received per type since the last reset.
	set map[string]int
}

func (c *countingSink) Update(typeURL string, set []zxds.Resource, removed []string) error {
	c.mu.Lock()
	c.set[typeURL] += len(set)
	c.mu.Unlock()
	return c.st.Update(typeURL, set, removed)
}

func (c *countingSink) reset() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.set
	c.set = map[string]int{}
	return old
}

// controlPlane is istiod-lite's model, store and xDS server.
type controlPlane struct {
	index     *model.Index
	store     *store.Store
	authority *ca.Authority
	srv       *tlsServer
	xds       *ixds.Server
}

func startControlPlane(t *testing.T, authority *ca.Authority, addr string, st *store.Store, idx *model.Index) *controlPlane {
	t.Helper()
	x := ixds.NewServer(st, nil)
	s := newTLSServer(t, authority, addr, x.Register)
	return &controlPlane{index: idx, store: st, authority: authority, srv: s, xds: x}
}

// ztunnel is the control-plane side of one ztunnel.
type ztunnel struct {
	state  *state.State
	sink   *countingSink
	client *zxds.Client
	done   chan error
}

func startZtunnel(t *testing.T, cp *controlPlane, node string) *ztunnel {
	t.Helper()
	st := state.New(state.Config{})
	sink := &countingSink{st: st, set: map[string]int{}}
	client, err := zxds.New(zxds.Config{
		Address: cp.srv.addr, RootCAFile: cp.srv.rootFile, ServerName: "istiod.istio-system.svc",
		TokenFile: writeToken(t, "ztunnel-token"),
		PodIP:     "10.250.0.11", PodName: "ztunnel-" + node, PodNamespace: "istio-system", NodeName: node,
	}, sink)
	if err != nil {
		t.Fatal(err)
	}
	st.SetLookuper(client)
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnel{state: st, sink: sink, client: client, done: make(chan error, 1)}
	go func() { z.done <- client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-z.done; err != nil {
			t.Errorf("xds client Run: %v", err)
		}
	})
	select {
	case <-client.Synced():
	case <-ctxT(t).Done():
		t.Fatal("xds client did not sync")
	}
	return z
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var web = map[string]string{"app": "web"}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestZtunnelAgainstIstiodLite runs the xDS client and state against istiod-lite's real
// server, store and model: the node-scoped wildcard set, on-demand lookups, removals, a
// reconnect with versions, and policy changes.
func TestZtunnelAgainstIstiodLite(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	authority, err := ca.NewSelfSigned("cluster.local")
	must(t, err)
	st := store.NewStore()
	idx := model.NewIndex(model.DefaultConfig(), st)
	must(t, idx.SetPod(pod("shop", "web-1", "node-1", "10.244.1.5", "web", web)))
	must(t, idx.SetPod(pod("shop", "client-1", "node-1", "10.244.1.6", "client", nil)))
	must(t, idx.SetPod(pod("shop", "web-2", "node-2", "10.244.2.5", "web", web)))
	must(t, idx.SetPod(pod("shop", "db-2", "node-2", "10.244.2.6", "db", nil)))
	must(t, idx.SetService(service("shop", "web", "10.96.0.10", web, 80, 8080)))
	cp := startControlPlane(t, authority, "127.0.0.1:0", st, idx)
	z := startZtunnel(t, cp, "node-1")
	ctx := ctxT(t)

	t.Run("wildcard is node-scoped", func(t *testing.T) {
		for _, a := range []string{"10.244.1.5", "10.244.1.6"} {
			if _, ok := z.state.WorkloadByAddr("", ip(a)); !ok {
				t.Errorf("local workload %s not held after sync", a)
			}
		}
		for _, a := range []string{"10.244.2.5", "10.244.2.6"} {
			if _, ok := z.state.WorkloadByAddr("", ip(a)); ok {
				t.Errorf("workload %s of node-2 held without asking", a)
			}
		}
		if w, ok := z.state.LocalWorkload("shop", "web-1"); !ok || w.Identity() != "spiffe://cluster.local/ns/shop/sa/web" || !w.Healthy {
			t.Errorf("LocalWorkload(shop, web-1): got %+v, %v", w, ok)
		}
		if _, _, ok := z.state.ServiceByVIP("", ip("10.96.0.10"), 80); !ok {
			t.Error("service web not held after sync")
		}
		if got := z.state.ServicesByHostname("web.shop.svc.cluster.local"); len(got) != 1 {
			t.Errorf("ServicesByHostname: got %v", got)
		}
	})

	t.Run("on-demand lookup of a workload on another node", func(t *testing.T) {
		w, err := z.state.FindWorkload(ctx, "", ip("10.244.2.6"))
		if err != nil || w.Name != "db-2" || w.Node != "node-2" {
			t.Fatalf("FindWorkload(10.244.2.6): got %+v, %v", w, err)
		}
		if _, err := z.state.FindWorkload(ctx, "", ip("10.244.9.9")); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("FindWorkload of an unknown IP: got %v, want ErrNotFound", err)
		}
	})

	t.Run("service endpoints on other nodes", func(t *testing.T) {
		svc, _, _ := z.state.ServiceByVIP("", ip("10.96.0.10"), 80)
		seen := map[string]bool{}
		for range 100 {
			ep, err := z.state.PickEndpoint(ctx, svc, 80)
			if err != nil {
				t.Fatal(err)
			}
			seen[ep.Addr.String()] = true
		}
		if !seen["10.244.1.5:8080"] || !seen["10.244.2.5:8080"] || len(seen) != 2 {
			t.Errorf("endpoints picked: got %v, want 10.244.1.5:8080 and 10.244.2.5:8080", seen)
		}
		// A new endpoint on another node keeps arriving while subscribed.
		must(t, idx.SetPod(pod("shop", "web-3", "node-3", "10.244.3.5", "web", web)))
		waitFor(t, "web-3 to arrive through the service subscription", func() bool {
			_, ok := z.state.WorkloadByAddr("", ip("10.244.3.5"))
			return ok
		})
	})

	t.Run("removals reach state", func(t *testing.T) {
		must(t, idx.DeletePod("shop", "db-2"))     // held on demand
		must(t, idx.DeletePod("shop", "client-1")) // local
		waitFor(t, "removed workloads to leave the state", func() bool {
			_, remote := z.state.WorkloadByAddr("", ip("10.244.2.6"))
			_, local := z.state.WorkloadByAddr("", ip("10.244.1.6"))
			return !remote && !local
		})
	})

	t.Run("policy update changes decisions and notifies", func(t *testing.T) {
		dst, _ := z.state.LocalWorkload("shop", "web-1")
		fromOps := &authz.Conn{Source: ip("10.244.2.9"), Destination: ip("10.244.1.5"), Port: 8080}
		fromOps.SetIdentity("spiffe://cluster.local/ns/ops/sa/admin")
		fromShop := &authz.Conn{Source: ip("10.244.2.6"), Destination: ip("10.244.1.5"), Port: 8080}
		fromShop.SetIdentity("spiffe://cluster.local/ns/shop/sa/db")
		plain := &authz.Conn{Source: ip("10.244.2.6"), Destination: ip("10.244.1.5"), Port: 8080}
		if d := z.state.Authorize(dst, fromShop); d.String() != "allowed: no ALLOW policies" {
			t.Errorf("before any policy: got %q", d)
		}
		_, changed := z.state.PolicyChanges()
		must(t, idx.SetAuthorizationPolicy(&securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "only-ops", Namespace: "shop"},
			Spec: v1beta1.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: web},
				Action:   v1beta1.AuthorizationPolicy_ALLOW,
				Rules:    []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Namespaces: []string{"ops"}}}}}},
			},
		}))
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("no policy change notification")
		}
		waitFor(t, "web-1 to list shop/only-ops and the decision to change", func() bool {
			dst, _ = z.state.LocalWorkload("shop", "web-1")
			return z.state.Authorize(dst, fromShop).String() == "denied: no ALLOW policy matched"
		})
		if d := z.state.Authorize(dst, fromOps); d.String() != "allowed by policy shop/only-ops" {
			t.Errorf("from ops: got %q", d)
		}

		// STRICT mTLS for the namespace: plaintext is refused by the static STRICT policy.
		gen, _ := z.state.PolicyChanges()
		must(t, idx.SetPeerAuthentication(&securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: "shop"},
			Spec:       v1beta1.PeerAuthentication{Mtls: &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}},
		}))
		waitFor(t, "plaintext to be denied by the static STRICT policy", func() bool {
			dst, _ = z.state.LocalWorkload("shop", "web-1")
			return z.state.Authorize(dst, plain).String() == "denied by policy istio-system/istio_converted_static_strict"
		})
		if g, _ := z.state.PolicyChanges(); g <= gen {
			t.Errorf("policy generation: got %d, want more than %d", g, gen)
		}
		if d := z.state.Authorize(dst, fromOps); !d.Allowed() {
			t.Errorf("mTLS from ops under STRICT: got %q", d)
		}
	})

	t.Run("reconnect sends versions", func(t *testing.T) {
		connects := z.client.Connects()
		addr := cp.srv.addr
		cp.srv.g.Stop()
		// While disconnected: one local pod changes, one goes.
		must(t, idx.SetPod(pod("shop", "web-1", "node-1", "10.244.1.5", "web-renamed", web)))
		must(t, idx.SetPod(pod("shop", "late-1", "node-1", "10.244.1.7", "late", nil)))
		z.sink.reset()
		cp2 := startControlPlane(t, authority, addr, st, idx)
		waitFor(t, "the client to reconnect", func() bool { return z.client.Connects() > connects })
		waitFor(t, "the changes made while disconnected", func() bool {
			w, ok := z.state.LocalWorkload("shop", "web-1")
			_, late := z.state.LocalWorkload("shop", "late-1")
			return ok && w.ServiceAccount == "web-renamed" && late
		})
		// Everything else was skipped thanks to initial_resource_versions: the two changed
		// workloads, not the service, web-3 or the policies.
		got := z.sink.reset()
		if got[zxds.AddressType] != 2 || got[zxds.AuthorizationType] != 0 {
			t.Errorf("resources sent after reconnect: got %v, want 2 addresses and no policies", got)
		}
		if cp2.xds.Streams() != 1 {
			t.Errorf("streams on the new server: got %d", cp2.xds.Streams())
		}
		// On-demand names stay subscribed across the reconnect.
		must(t, idx.SetPod(pod("shop", "web-4", "node-2", "10.244.2.8", "web", web)))
		waitFor(t, "web-4 through the service subscribed before the reconnect", func() bool {
			_, ok := z.state.WorkloadByAddr("", ip("10.244.2.8"))
			return ok
		})
	})
}
