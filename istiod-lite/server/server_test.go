package server

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
)

// TestFileMode runs istiod-lite without Kubernetes: a pod in a YAML file reaches an xDS
// client of its node.
func TestFileMode(t *testing.T) {
	dir := t.TempDir()
	pod := `apiVersion: v1
kind: Pod
metadata: {name: vm-1, namespace: shop}
spec: {nodeName: bare-metal-1}
status: {phase: Running, podIP: 192.168.7.10}
`
	if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), []byte(pod), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ConfigDir = dir
	cfg.PlaintextAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	s, err := Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	resp, err := http.Get("http://" + s.HTTPAddr + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/ready = %d %q; want 200", resp.StatusCode, body)
	}

	conn, err := grpc.NewClient(s.PlaintextAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "ztunnel~bare-metal-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{xds.NodeNameKey: structpb.NewStringValue("bare-metal-1")}}}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: model.AddressType}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Resources) != 1 || r.Resources[0].Name != "Kubernetes//Pod/shop/vm-1" {
		t.Errorf("file-mode client got %v; want the pod of its node", r.Resources)
	}

	// The client is still connected: the metrics count it.
	resp, err = http.Get("http://" + s.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pilot_xds 1", `istiod_lite_resources{type="address"} 1`, "pilot_xds_pushes 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
