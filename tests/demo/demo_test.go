package demo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/ambitctl/install"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

var (
	c        *cluster.Cluster
	ambitctl string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambitctl-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ambitctl, err = BuildAmbitctl(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := cluster.RunTests(m, cluster.Config{Nodes: 2}, &c)
	os.RemoveAll(dir)
	os.Exit(code)
}

// ambit runs ambitctl against the cluster and returns its combined output.
func ambit(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, ambitctl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func kube(t *testing.T) *install.Kube {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	k, err := install.NewKube(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// checkNothingLeft fails t if anything of Ambit is still on the cluster.
func checkNothingLeft(ctx context.Context, t *testing.T) {
	t.Helper()
	left, err := install.Leftovers(ctx, kube(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("still on the cluster after uninstall --purge:\n  %s", strings.Join(left, "\n  "))
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, install.Namespace, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s is still there after uninstall --purge", install.Namespace)
	}
}

// An install whose control plane never becomes ready fails after the timeout with the pod's
// reason, and the purge afterwards leaves the cluster clean. It runs first, on a clean cluster.
func TestInstallNeverReadyNamesTheReason(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	out, err := ambit(ctx, "install", "--set", "tag=no-such-tag", "--set", "components.cni.enabled=false",
		"--set", "components.ztunnel.enabled=false", "--timeout", "20s")
	t.Logf("ambitctl install (%.1fs):\n%s", time.Since(began).Seconds(), out)
	if err == nil {
		t.Fatal("install with an image that does not exist succeeded")
	}
	for _, want := range []string{"Deployment istio-system/istiod not ready after 20s", "ambit.local/istiod-lite:no-such-tag"} {
		if !strings.Contains(out, want) {
			t.Errorf("the failure does not say %q", want)
		}
	}
	if !strings.Contains(out, "ErrImagePull") && !strings.Contains(out, "ImagePullBackOff") {
		t.Errorf("the failure does not give the kubelet's reason (ErrImagePull or ImagePullBackOff)")
	}
	out, err = ambit(ctx, "uninstall", "--purge")
	t.Logf("ambitctl uninstall --purge:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(ctx, t)
}

// TestDemo is `make demo`'s journey, then the rest of ambitctl on the installed mesh:
// ztunnel-config, waypoints, and an uninstall --purge that leaves nothing.
func TestDemo(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	var out bytes.Buffer
	d, err := newRun(Env{Cluster: c, Ambitctl: ambitctl, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if o, err := ambit(context.Background(), "uninstall", "--purge"); err != nil {
			t.Logf("cleaning up: %v\n%s", err, o)
		}
	})
	err = d.all(ctx)
	t.Logf("the demo's output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("ztunnel-config", func(t *testing.T) {
		// Back into the mesh, so that the ztunnels hold certificates for the sample.
		if err := d.label(ctx, `"ambient"`); err != nil {
			t.Fatal(err)
		}
		if err := d.waitRedirection(ctx, true); err != nil {
			t.Fatal(err)
		}
		if _, err := d.request(ctx, "client", "http://"+d.nginxVIP+"/", 2); err != nil {
			t.Fatal(err)
		}
		nginxID := "spiffe://cluster.local/ns/" + Namespace + "/sa/nginx"
		for _, tc := range []struct {
			section string
			node    string
			want    [][]string // each row must hold all of its fields
		}{
			{"workloads", "", [][]string{{"ZTUNNEL NODE", "IDENTITY"}, {d.node2, d.pods["nginx-v1"].Name, "HBONE", nginxID}}},
			{"services", d.node2, [][]string{{"SERVICE VIP", "ENDPOINTS"}, {Namespace, "nginx", d.nginxVIP}}},
			{"policies", d.node2, [][]string{{"POLICY NAME"}, {Namespace, "nginx-allow-client", "ALLOW", "WORKLOAD_SELECTOR"}}},
			{"certificates", d.node2, [][]string{{"CERTIFICATE NAME", "NOT AFTER"}, {nginxID, "Available"}}},
		} {
			var out string
			err := c.Wait(ctx, 30*time.Second, "ztunnel-config "+tc.section, func(ctx context.Context) (bool, error) {
				args := []string{"ztunnel-config", tc.section}
				if tc.node != "" {
					args = append(args, "--node", tc.node)
				}
				var err error
				if out, err = ambit(ctx, args...); err != nil {
					return false, nil
				}
				lines := strings.Split(out, "\n")
				for _, row := range tc.want {
					if !hasRow(lines, row...) {
						return false, nil
					}
				}
				return true, nil
			})
			if err != nil {
				t.Errorf("%v; want rows %q, got:\n%s", err, tc.want, out)
			}
		}
		out, err := ambit(ctx, "ztunnel-config", "routes")
		if err == nil || !strings.Contains(out, "workloads") {
			t.Errorf("ztunnel-config routes: %v, %q; want a refusal naming the sections", err, out)
		}
		out, err = ambit(ctx, "ztunnel-config", "workloads", "--node", "no-such-node")
		if err == nil || !strings.Contains(out, d.node1) {
			t.Errorf("ztunnel-config --node no-such-node: %v, %q; want a refusal naming the nodes", err, out)
		}
	})

	t.Run("waypoint", func(t *testing.T) {
		out, err := ambit(ctx, "waypoint", "apply", "-n", Namespace, "--enroll-namespace")
		if err != nil {
			t.Fatalf("waypoint apply: %v\n%s", err, out)
		}
		gw, err := c.Kubectl(ctx, "get", "gateway", "-n", Namespace, "waypoint", "-o",
			`jsonpath={.spec.gatewayClassName} {.spec.listeners[0].name} {.spec.listeners[0].port} {.spec.listeners[0].protocol} {.metadata.labels.istio\.io/waypoint-for}`)
		if err != nil || gw != "istio-waypoint mesh 15008 HBONE service" {
			t.Errorf("Gateway waypoint: %q, %v; want class istio-waypoint, listener mesh 15008 HBONE, for service", gw, err)
		}
		ns, err := c.Client.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		if err != nil || ns.Labels["istio.io/use-waypoint"] != "waypoint" {
			t.Errorf("namespace %s not labelled istio.io/use-waypoint=waypoint: %v %v", Namespace, ns.Labels, err)
		}
		if out, err := ambit(ctx, "waypoint", "list", "-n", Namespace); err != nil || !hasRow(strings.Split(out, "\n"), Namespace, "waypoint", "service") {
			t.Errorf("waypoint list: %v\n%s", err, out)
		}
		if out, err := ambit(ctx, "waypoint", "apply", "-n", Namespace, "--for", "pods"); err == nil || !strings.Contains(out, "workload") {
			t.Errorf("waypoint apply --for pods: %v, %q; want a refusal naming the valid values", err, out)
		}
		if out, err := ambit(ctx, "waypoint", "delete", "-n", Namespace); err != nil {
			t.Fatalf("waypoint delete: %v\n%s", err, out)
		}
		if _, err := c.Kubectl(ctx, "get", "gateway", "-n", Namespace, "waypoint"); err == nil {
			t.Error("Gateway waypoint still there after waypoint delete")
		}
		ns, err = c.Client.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		if err != nil || ns.Labels["istio.io/use-waypoint"] != "" {
			t.Errorf("namespace %s still labelled istio.io/use-waypoint after waypoint delete: %v %v", Namespace, ns.Labels, err)
		}
	})

	t.Run("uninstall --purge leaves nothing", func(t *testing.T) {
		out, err := ambit(ctx, "uninstall", "--purge")
		t.Logf("ambitctl uninstall --purge:\n%s", out)
		if err != nil {
			t.Fatal(err)
		}
		checkNothingLeft(ctx, t)
		// The sample, enrolled when the mesh went, talks directly again.
		if err := d.waitRedirection(ctx, false); err != nil {
			t.Error(err)
		}
		sum, err := d.request(ctx, "client", "http://"+d.nginxVIP+"/", 5)
		if err != nil || sum.OK != 5 {
			t.Errorf("client -> nginx after the uninstall: %d/5 answered (%q), %v", sum.OK, sum.FirstError, err)
		}
	})
}
