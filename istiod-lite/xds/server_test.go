package xds

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

const addressType = "type.googleapis.com/istio.workload.Address"

func wl(name, node string, ip byte) store.Resource {
	uid := "Kubernetes//Pod/ns/" + name
	return store.Resource{
		Name: uid,
		Message: &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
			Uid: uid, Name: name, Namespace: "ns", Node: node, Addresses: [][]byte{{10, 0, 0, ip}},
		}}},
		Node:    node,
		Aliases: []string{"/10.0.0." + string('0'+ip)},
	}
}

func svc(name string, includes ...string) store.Resource {
	key := "ns/" + name + ".ns.svc.cluster.local"
	return store.Resource{
		Name:     key,
		Message:  &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{Name: name, Namespace: "ns", Hostname: name + ".ns.svc.cluster.local"}}},
		Includes: includes,
	}
}

// startServer runs a Server for store on 127.0.0.1 and returns a connected client factory.
func startServer(t *testing.T, st *store.Store) func() discovery.AggregatedDiscoveryServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	NewServer(st, nil).Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return func() discovery.AggregatedDiscoveryServiceClient {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return discovery.NewAggregatedDiscoveryServiceClient(conn)
	}
}

type client struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
	node   *core.Node
	cancel context.CancelFunc
}

func connect(t *testing.T, c discovery.AggregatedDiscoveryServiceClient, node string) *client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := &core.Node{Id: "ztunnel~" + node}
	if node != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{NodeNameKey: structpb.NewStringValue(node)}}
	}
	return &client{t: t, stream: s, node: n, cancel: cancel}
}

func (c *client) send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if req.TypeUrl == "" {
		req.TypeUrl = addressType
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next response's resource names and removals, failing after a timeout.
func (c *client) recv() (names, removed []string, resp *discovery.DeltaDiscoveryResponse) {
	c.t.Helper()
	got := make(chan *discovery.DeltaDiscoveryResponse, 1)
	errc := make(chan error, 1)
	go func() {
		r, err := c.stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		got <- r
	}()
	select {
	case r := <-got:
		for _, res := range r.Resources {
			names = append(names, res.Name)
		}
		slices.Sort(names)
		return names, r.RemovedResources, r
	case err := <-errc:
		c.t.Fatalf("receiving: %v", err)
	case <-time.After(5 * time.Second):
		c.t.Fatal("no response within 5s")
	}
	return nil, nil, nil
}

// ack acknowledges a response.
func (c *client) ack(r *discovery.DeltaDiscoveryResponse) {
	c.send(&discovery.DeltaDiscoveryRequest{ResponseNonce: r.Nonce})
}

func TestWildcardIsNodeScoped(t *testing.T) {
	st := store.NewStore()
	a, b := wl("a", "node-1", 1), wl("b", "node-2", 2)
	if err := st.Update(addressType, []store.Resource{a, b, svc("web", a.Name, b.Name)}, nil); err != nil {
		t.Fatal(err)
	}
	c := connect(t, startServer(t, st)(), "node-1")
	c.send(&discovery.DeltaDiscoveryRequest{})
	names, removed, resp := c.recv()
	want := []string{"Kubernetes//Pod/ns/a", "ns/web.ns.svc.cluster.local"}
	if !slices.Equal(names, want) || len(removed) != 0 {
		t.Fatalf("node-1's wildcard view = %v (removed %v); want %v", names, removed, want)
	}
	c.ack(resp)

	// A change to a workload on another node is not sent; one on this node is.
	b2 := wl("b", "node-2", 3)
	a2 := wl("a", "node-1", 4)
	st.Update(addressType, []store.Resource{b2, a2}, nil)
	names, _, resp = c.recv()
	if !slices.Equal(names, []string{"Kubernetes//Pod/ns/a"}) {
		t.Fatalf("after changing a and b, node-1 got %v; want only a", names)
	}
	c.ack(resp)
	st.Update(addressType, nil, []string{a.Name})
	if _, removed, _ = c.recv(); !slices.Equal(removed, []string{a.Name}) {
		t.Fatalf("after deleting a, removed = %v; want [%s]", removed, a.Name)
	}
}

func TestNoNodeGetsFullState(t *testing.T) {
	st := store.NewStore()
	st.Update(addressType, []store.Resource{wl("a", "node-1", 1), wl("b", "node-2", 2)}, nil)
	c := connect(t, startServer(t, st)(), "")
	c.send(&discovery.DeltaDiscoveryRequest{})
	if names, _, _ := c.recv(); len(names) != 2 {
		t.Fatalf("a client without a node got %v; want both workloads", names)
	}
}

func TestReconnectSkipsWhatClientHas(t *testing.T) {
	st := store.NewStore()
	a, c1, gone := wl("a", "node-1", 1), wl("c", "node-1", 3), wl("d", "node-1", 4)
	st.Update(addressType, []store.Resource{a, c1, gone}, nil)
	newClient := startServer(t, st)
	first := connect(t, newClient(), "node-1")
	first.send(&discovery.DeltaDiscoveryRequest{})
	_, _, resp := first.recv()
	versions := map[string]string{}
	for _, r := range resp.Resources {
		versions[r.Name] = r.Version
	}
	first.cancel()

	// While the client is away: c changes, d goes.
	st.Update(addressType, []store.Resource{wl("c", "node-1", 5)}, []string{gone.Name})
	again := connect(t, newClient(), "node-1")
	again.send(&discovery.DeltaDiscoveryRequest{InitialResourceVersions: versions})
	names, removed, _ := again.recv()
	if !slices.Equal(names, []string{c1.Name}) || !slices.Equal(removed, []string{gone.Name}) {
		t.Fatalf("reconnect got %v, removed %v; want only %s changed and %s removed", names, removed, c1.Name, gone.Name)
	}
}

func TestOnDemand(t *testing.T) {
	st := store.NewStore()
	a, b := wl("a", "node-1", 1), wl("b", "node-2", 2)
	web := svc("web", b.Name)
	st.Update(addressType, []store.Resource{a, b, web}, nil)
	c := connect(t, startServer(t, st)(), "node-1")
	c.send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"*"}})
	c.recv()

	// By alias: the workload on another node arrives under its own name.
	c.send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"/10.0.0.2"}})
	names, _, resp := c.recv()
	if !slices.Equal(names, []string{b.Name}) || !slices.Contains(resp.Resources[0].Aliases, "/10.0.0.2") {
		t.Fatalf("subscribing to /10.0.0.2 sent %v; want %s with its alias", names, b.Name)
	}
	// A missing name is answered as removed, so the lookup ends.
	c.send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"/10.9.9.9"}})
	if _, removed, _ := c.recv(); !slices.Equal(removed, []string{"/10.9.9.9"}) {
		t.Fatalf("subscribing to a missing name removed %v; want [/10.9.9.9]", removed)
	}
	// A service subscribed by name brings the workloads it includes, and new ones later.
	c2 := connect(t, startServer(t, st)(), "node-3")
	c2.send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{web.Name}})
	if names, _, _ := c2.recv(); !slices.Equal(names, []string{b.Name, web.Name}) {
		t.Fatalf("subscribing to %s sent %v; want it and %s", web.Name, names, b.Name)
	}
	e := wl("e", "node-2", 6)
	st.Update(addressType, []store.Resource{e, svc("web", b.Name, e.Name)}, nil)
	// The service itself did not change (its endpoints are in the workloads), so only the
	// new workload is sent.
	if names, _, _ := c2.recv(); !slices.Equal(names, []string{e.Name}) {
		t.Fatalf("after a new endpoint, got %v; want only %s", names, e.Name)
	}
}

func TestNACKDoesNotWedge(t *testing.T) {
	st := store.NewStore()
	st.Update(addressType, []store.Resource{wl("a", "node-1", 1)}, nil)
	c := connect(t, startServer(t, st)(), "node-1")
	c.send(&discovery.DeltaDiscoveryRequest{})
	_, _, resp := c.recv()
	c.send(&discovery.DeltaDiscoveryRequest{ResponseNonce: resp.Nonce, ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad workload"}})
	st.Update(addressType, []store.Resource{wl("f", "node-1", 7)}, nil)
	if names, _, _ := c.recv(); !slices.Equal(names, []string{"Kubernetes//Pod/ns/f"}) {
		t.Fatalf("after a NACK the next change sent %v; want f", names)
	}
}
