package smoke

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

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
}
