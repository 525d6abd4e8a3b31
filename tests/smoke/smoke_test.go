package smoke

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/tests/cluster"
)

// c is the package's shared two-node cluster.
var c *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(cluster.RunTests(m, cluster.Config{Nodes: 2}, &c))
}

func TestSmoke(t *testing.T) {
	cluster.Require(t, c)
	ns := c.Namespace(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := Run(ctx, c, ns, func(title, detail string) { t.Logf("%s: %s", title, detail) })
	if err != nil {
		t.Fatal(err)
	}

	t.Run("capture sees cross-node plaintext", func(t *testing.T) {
		// Without a mesh, a payload sent from node-1 to a pod on node-2 crosses the fabric in
		// clear: the capture must find it (the mesh tests assert the opposite).
		pods, err := c.WaitForPods(ctx, ns, "app=echo", 2, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var remote string
		for _, p := range pods {
			if p.Spec.NodeName != c.Nodes[0].Name {
				remote = p.Status.PodIP
			}
		}
		capture, err := c.CaptureFabric(filepath.Join(t.TempDir(), "fabric.pcap"))
		if err != nil {
			t.Fatal(err)
		}
		marker := fmt.Sprintf("ambit-marker-%d", time.Now().UnixNano())
		out, _, err := c.Exec(ctx, ns, "client", "", "/usr/local/bin/echo", "client",
			"--url", "http://"+remote+":8080/", "--payload", marker)
		path, stopErr := capture.Stop()
		if err != nil || stopErr != nil {
			t.Fatalf("sending the marker: %v, %v: %s", err, stopErr, out)
		}
		if !capture.Contains([]byte(marker)) {
			t.Errorf("capture of %d bytes does not contain the marker %q", capture.Bytes(), marker)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() <= 24 {
			t.Errorf("pcap file %s: %v, %v; want a header and frames", path, fi, err)
		}
	})
}

// TestMissingImageFailsWithReason checks that a pod whose image is not on the node fails the
// wait at once with the kubelet's reason, not a timeout with no reason.
func TestMissingImageFailsWithReason(t *testing.T) {
	cluster.Require(t, c)
	ns := c.Namespace(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const pod = `
apiVersion: v1
kind: Pod
metadata: {name: ghost, labels: {app: ghost}}
spec:
  containers:
  - name: ghost
    image: ambit.local/does-not-exist:dev
    imagePullPolicy: Never
`
	if err := c.Apply(ctx, ns, pod); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err := c.WaitForPods(ctx, ns, "app=ghost", 1, time.Minute)
	if err == nil {
		t.Fatal("WaitForPods succeeded for a pod whose image does not exist")
	}
	for _, want := range []string{"ErrImageNeverPull", "ambit.local/does-not-exist:dev", "ghost"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if d := time.Since(began); d > 45*time.Second {
		t.Errorf("the failure took %v to surface; want it as soon as the kubelet reports it", d)
	}

	if err := c.Delete(ctx, ns, pod); err != nil {
		t.Fatal(err)
	}
	err = c.Wait(ctx, time.Minute, "pod ghost deleted", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, "ghost", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Error(err)
	}
}
