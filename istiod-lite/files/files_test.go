package files

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

const manifests = `
apiVersion: v1
kind: Pod
metadata: {name: vm-1, namespace: shop, labels: {app: cart}}
spec: {nodeName: bare-metal-1, serviceAccountName: cart}
status: {phase: Running, podIP: 192.168.7.10, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  clusterIP: 10.96.3.3
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]
`

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadAndReload(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "shop.yaml", manifests)
	st := store.NewStore()
	src := NewSource(dir, model.NewIndex(model.DefaultConfig(), st), nil)
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	v := st.View(model.AddressType, true, "bare-metal-1", nil)
	if _, ok := v["Kubernetes//Pod/shop/vm-1"]; !ok || len(v) != 2 {
		t.Fatalf("after load the node's view holds %d resources; want vm-1 and the cart service", len(v))
	}
	if st.Len(model.AuthorizationType) != 1 {
		t.Fatalf("after load the store holds %d authorizations; want the cart-callers policy", st.Len(model.AuthorizationType))
	}

	// A broken file fails the load and keeps the previous state.
	write(t, dir, "broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [\n")
	if err := src.Load(); err == nil || !strings.Contains(err.Error(), "broken.yaml") {
		t.Errorf("loading a broken file: %v; want an error naming broken.yaml", err)
	}
	if st.Len(model.AddressType) != 2 {
		t.Errorf("a failed load changed the store: %d resources", st.Len(model.AddressType))
	}
	write(t, dir, "broken.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
	if err := src.Load(); err == nil || !strings.Contains(err.Error(), "kind Deployment is not read in file mode") {
		t.Errorf("loading an unsupported kind: %v; want an error naming the kind", err)
	}
	os.Remove(filepath.Join(dir, "broken.yaml"))

	// Run picks up an edit: the pod goes away.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, 10*time.Millisecond) }()
	write(t, dir, "shop.yaml", manifests[strings.Index(manifests, "---"):strings.LastIndex(manifests, "---")])
	deadline := time.Now().Add(5 * time.Second)
	for st.Len(model.AddressType) != 1 || st.Len(model.AuthorizationType) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the edit was not picked up: store holds %d resources; want the service only", st.Len(model.AddressType))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed policy is still served")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
