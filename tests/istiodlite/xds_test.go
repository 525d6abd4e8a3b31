// Package istiodlite tests istiod-lite end to end against a real Kubernetes cluster: objects
// created in the API server reach connected xDS clients as the right deltas.
package istiodlite

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/server"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

var c *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(cluster.RunTests(m, cluster.Config{Nodes: 2}, &c))
}

var crds = sync.OnceValue(func() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.InstallIstioCRDs(ctx); err != nil {
		return err
	}
	// istiod-lite's namespace, which holds its CA Secret.
	return c.CreateNamespace(ctx, "istio-system", nil)
})

// installCRDs applies the Istio CRDs once per package.
func installCRDs(t *testing.T) {
	t.Helper()
	if err := crds(); err != nil {
		t.Fatalf("installing the Istio CRDs: %v", err)
	}
}

// startIstiod runs istiod-lite in the test process against the cluster.
func startIstiod(t *testing.T) *server.Server {
	t.Helper()
	installCRDs(t)
	cfg := server.DefaultConfig()
	cfg.Kubeconfig = c.Kubeconfig
	cfg.PlaintextAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	s, err := server.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// xdsClient is a delta ADS client that keeps the state a ztunnel would keep.
type xdsClient struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
	node   *core.Node
	resps  chan *discovery.DeltaDiscoveryResponse
	// state holds what the client has: name -> (version, address).
	state map[string]held
}

type held struct {
	version string
	addr    *workload.Address       // for Address resources
	authz   *security.Authorization // for Authorization resources
}

func dial(t *testing.T, addr, node string, initial map[string]string) *xdsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	x := &xdsClient{t: t, stream: stream, resps: make(chan *discovery.DeltaDiscoveryResponse, 100), state: map[string]held{},
		node: &core.Node{Id: "ztunnel~test~" + node, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{xds.NodeNameKey: structpb.NewStringValue(node)}}}}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(x.resps)
				return
			}
			x.resps <- r
		}
	}()
	x.send(&discovery.DeltaDiscoveryRequest{InitialResourceVersions: initial})
	return x
}

func (x *xdsClient) send(req *discovery.DeltaDiscoveryRequest) {
	x.t.Helper()
	x.sendType(model.AddressType, req)
}

func (x *xdsClient) sendType(typeURL string, req *discovery.DeltaDiscoveryRequest) {
	x.t.Helper()
	req.Node, req.TypeUrl = x.node, typeURL
	if err := x.stream.Send(req); err != nil {
		x.t.Fatal(err)
	}
}

// next applies the next response to the state, acknowledges it and returns it.
func (x *xdsClient) next(timeout time.Duration) *discovery.DeltaDiscoveryResponse {
	x.t.Helper()
	select {
	case r, ok := <-x.resps:
		if !ok {
			x.t.Fatal("xDS stream closed")
		}
		for _, res := range r.Resources {
			h := held{version: res.Version}
			var err error
			if r.TypeUrl == model.AuthorizationType {
				h.authz = &security.Authorization{}
				err = res.Resource.UnmarshalTo(h.authz)
			} else {
				h.addr = &workload.Address{}
				err = res.Resource.UnmarshalTo(h.addr)
			}
			if err != nil {
				x.t.Fatalf("decoding %s: %v", res.Name, err)
			}
			x.state[res.Name] = h
		}
		for _, name := range r.RemovedResources {
			delete(x.state, name)
		}
		x.sendType(r.TypeUrl, &discovery.DeltaDiscoveryRequest{ResponseNonce: r.Nonce})
		return r
	case <-time.After(timeout):
		return nil
	}
}

// waitFor applies responses until cond holds on the state.
func (x *xdsClient) waitFor(what string, cond func() bool) {
	x.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			x.t.Fatalf("waiting for %s; client holds %v", what, x.names())
		}
		x.next(time.Until(deadline))
	}
}

func (x *xdsClient) names() []string {
	var out []string
	for n := range x.state {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (x *xdsClient) versions() map[string]string {
	out := map[string]string{}
	for n, h := range x.state {
		out[n] = h.version
	}
	return out
}

const pods = `
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

func TestDeltasReachClients(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	istiod := startIstiod(t)
	node1 := dial(t, istiod.PlaintextAddr, "node-1", nil)
	node1.waitFor("the kubernetes Service", func() bool {
		_, ok := node1.state["default/kubernetes.default.svc.cluster.local"]
		return ok
	})

	ns := c.Namespace(t, nil)
	if err := c.Apply(ctx, ns, pods); err != nil {
		t.Fatal(err)
	}
	uidA, uidB := "Kubernetes//Pod/"+ns+"/a", "Kubernetes//Pod/"+ns+"/b"
	svcKey := ns + "/web." + ns + ".svc.cluster.local"
	node1.waitFor("pod a healthy with its service", func() bool {
		w := node1.state[uidA].addr.GetWorkload()
		_, svc := node1.state[svcKey]
		return svc && w.GetStatus() == workload.WorkloadStatus_HEALTHY && len(w.GetServices()[svcKey].GetPorts()) == 1
	})
	if _, ok := node1.state[uidB]; ok {
		t.Errorf("node-1's client holds pod b of node-2; want node-scoped state")
	}
	w := node1.state[uidA].addr.GetWorkload()
	if w.GetNode() != "node-1" || len(w.GetAddresses()) != 1 || w.GetServiceAccount() != "default" || w.GetTunnelProtocol() != workload.TunnelProtocol_NONE {
		t.Errorf("workload a = %v; want node-1, one address, service account default, no HBONE", w)
	}

	// A label change reaches the client as a delta of that workload alone.
	if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, "a", "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"version":"v7"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	r := awaitResponse(t, node1, func(r *discovery.DeltaDiscoveryResponse) bool {
		return len(r.Resources) == 1 && r.Resources[0].Name == uidA
	})
	if rev := node1.state[uidA].addr.GetWorkload().GetCanonicalRevision(); rev != "v7" {
		t.Errorf("after relabel canonical revision = %q; want v7 (response %v)", rev, r)
	}

	// Reconnect with what the client holds: nothing is resent.
	again := dial(t, istiod.PlaintextAddr, "node-1", node1.versions())
	first := again.next(10 * time.Second)
	if first == nil || len(first.Resources) != 0 || len(first.RemovedResources) != 0 {
		t.Errorf("reconnect with current versions got %v; want an empty response", first)
	}

	// A NACK is logged and the stream goes on: the next change still arrives.
	node1.send(&discovery.DeltaDiscoveryRequest{ResponseNonce: r.Nonce, ErrorDetail: &rpcstatus.Status{Code: 3, Message: "test NACK"}})

	// Deleting the pod and the service removes them.
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "a", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	node1.waitFor("pod a and service web removed", func() bool {
		_, a := node1.state[uidA]
		_, s := node1.state[svcKey]
		return !a && !s
	})
	// The other node's client saw b, never a.
	node2 := dial(t, istiod.PlaintextAddr, "node-2", nil)
	node2.waitFor("pod b", func() bool { _, ok := node2.state[uidB]; return ok })
	for _, n := range node2.names() {
		if strings.Contains(n, "/Pod/") && n != uidB && strings.Contains(n, ns) {
			t.Errorf("node-2's client holds %s; want only its own pods", n)
		}
	}
}

// awaitResponse applies responses until one satisfies match.
func awaitResponse(t *testing.T, x *xdsClient, match func(*discovery.DeltaDiscoveryResponse) bool) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r := x.next(time.Until(deadline)); r != nil && match(r) {
			return r
		}
	}
	t.Fatalf("no matching response within 30s; client holds %v", x.names())
	return nil
}
