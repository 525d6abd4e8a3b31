// Package demo is the user journey of `make demo`, step by step, each step checked: install
// Ambit with ambitctl on a test cluster, deploy a sample, enrol its namespace in ambient mode
// without restarting anything, see mTLS identities, refuse a pod with an L4
// AuthorizationPolicy, and return to plaintext by removing the label. The same code runs as
// an end-to-end test (demo_test.go), so what the demo claims is what the test checks.
package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/tests/apps/echo/echo"
	"github.com/ambit-mesh/ambit/tests/cluster"
)

// Namespace is where the sample runs.
const Namespace = "demo"

// Env is what the demo runs against.
type Env struct {
	Cluster *cluster.Cluster
	// Ambitctl is the path of the ambitctl binary (BuildAmbitctl makes one).
	Ambitctl string
	// Out receives what a person watching sees.
	Out io.Writer
}

// BuildAmbitctl compiles ambitctl from the module into dir and returns its path.
func BuildAmbitctl(ctx context.Context, dir string) (string, error) {
	root, err := cluster.ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "ambitctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./ambitctl")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building ambitctl: %w\n%s", err, b)
	}
	return out, nil
}

// step prints a numbered step: its title and a short explanation.
type stepper struct {
	out io.Writer
	n   int
}

func (s *stepper) step(title, why string) {
	s.n++
	fmt.Fprintf(s.out, "\n%d. %s\n", s.n, title)
	if why != "" {
		fmt.Fprintf(s.out, "   %s\n", why)
	}
}

// show prints a checked fact under the current step.
func (s *stepper) show(format string, args ...any) {
	fmt.Fprintf(s.out, "   ✔ "+format+"\n", args...)
}

// Run runs the demo. It returns at the first step whose check fails.
func Run(ctx context.Context, env Env) error {
	d, err := newRun(env)
	if err != nil {
		return err
	}
	return d.all(ctx)
}

func newRun(env Env) (*run, error) {
	c := env.Cluster
	if len(c.Nodes) < 2 {
		return nil, fmt.Errorf("the demo needs 2 nodes; the cluster has %d", len(c.Nodes))
	}
	return &run{Env: env, s: &stepper{out: env.Out}, node1: c.Nodes[0].Name, node2: c.Nodes[1].Name}, nil
}

// all runs every step.
func (d *run) all(ctx context.Context) error {
	s := d.s
	s.step("Check the cluster can take Ambit", "$ ambitctl precheck")
	if err := d.ambitctl(ctx, "precheck"); err != nil {
		return err
	}

	s.step("Install Ambit", "$ ambitctl install --set profile=ambient")
	if err := d.ambitctl(ctx, "install", "--set", "profile=ambient", "--timeout", "3m"); err != nil {
		return err
	}

	s.step("Deploy the sample app (not in the mesh yet)",
		"client and other call nginx (v1 on "+d.node2+", v2 on "+d.node1+"); hello and world are two more services.")
	if err := d.deploy(ctx); err != nil {
		return err
	}

	s.step("Traffic before the mesh is plain TCP", "client -> nginx goes straight from pod to pod; no ztunnel is involved.")
	if err := d.plaintext(ctx); err != nil {
		return err
	}

	s.step("Enrol the namespace in ambient mode", "$ kubectl label namespace "+Namespace+" istio.io/dataplane-mode=ambient")
	if err := d.enrol(ctx); err != nil {
		return err
	}

	s.step("Traffic is now mutual TLS between SPIFFE identities",
		"The ztunnels on both nodes carry it over HBONE (port 15008); the apps changed nothing.")
	if err := d.meshed(ctx); err != nil {
		return err
	}

	s.step("See what a ztunnel knows", "$ ambitctl ztunnel-config workloads --node "+d.node2)
	if err := d.ztunnelConfig(ctx); err != nil {
		return err
	}

	s.step("Allow only the client to reach nginx (an L4 AuthorizationPolicy)",
		"$ kubectl apply -f - <<< 'AuthorizationPolicy nginx-allow-client: ALLOW from principal cluster.local/ns/"+Namespace+"/sa/client'")
	if err := d.policy(ctx); err != nil {
		return err
	}

	s.step("Leave the mesh: remove the label", "$ kubectl label namespace "+Namespace+" istio.io/dataplane-mode-")
	if err := d.leave(ctx); err != nil {
		return err
	}
	return nil
}

// run is one demo run's state.
type run struct {
	Env
	s            *stepper
	node1, node2 string
	nginxVIP     string
	// pods are the sample's pods by app, as first seen (for the no-restart check).
	pods map[string]corev1.Pod
}

// ambitctl runs ambitctl against the cluster and shows its output indented.
func (d *run) ambitctl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, d.Ambitctl, append([]string{"--kubeconfig", d.Cluster.Kubeconfig}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintf(d.Out, "     %s\n", sc.Text())
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("ambitctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (d *run) deploy(ctx context.Context) error {
	c := d.Cluster
	if err := c.CreateNamespace(ctx, Namespace, nil); err != nil {
		return err
	}
	if err := c.Apply(ctx, Namespace, sample(d.node1, d.node2)); err != nil {
		return err
	}
	d.pods = map[string]corev1.Pod{}
	for _, name := range []string{"client", "other", "nginx-v1", "nginx-v2", "hello", "world"} {
		pods, err := c.WaitForDeployment(ctx, Namespace, name, 2*time.Minute)
		if err != nil {
			return err
		}
		d.pods[name] = pods[0]
	}
	svc, err := c.WaitServiceRouted(ctx, Namespace, "nginx", 2, time.Minute)
	if err != nil {
		return err
	}
	d.nginxVIP = svc.Spec.ClusterIP
	var where []string
	for _, name := range []string{"client", "other", "nginx-v1", "nginx-v2", "hello", "world"} {
		where = append(where, name+" on "+d.pods[name].Spec.NodeName)
	}
	d.s.show("6 pods running: %s", strings.Join(where, ", "))
	return nil
}

// plaintext checks that client reaches nginx directly: both versions answer, nginx sees the
// client's pod IP, and no ztunnel counts a connection of the namespace.
func (d *run) plaintext(ctx context.Context) error {
	before, err := d.meshConnections(ctx)
	if err != nil {
		return err
	}
	sum, err := d.request(ctx, "client", "http://"+d.nginxVIP+"/", 20)
	if err != nil {
		return err
	}
	if sum.OK != 20 {
		return fmt.Errorf("client -> nginx: %d/20 answered (first error %q); want all", sum.OK, sum.FirstError)
	}
	d.s.show("client -> nginx (%s:80): 20/20 answered, %s", d.nginxVIP, versions(sum))
	after, err := d.meshConnections(ctx)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("the ztunnels counted %d new connections of namespace %s; want none outside the mesh", after-before, Namespace)
	}
	d.s.show("the ztunnels counted no connection for them (istio_tcp_connections_opened_total unchanged at %d)", after)
	return nil
}

func versions(s echo.Summary) string {
	return fmt.Sprintf("v1 %d, v2 %d", s.ByVersion["v1"], s.ByVersion["v2"])
}

// request runs the echo client in pod's Deployment against url, one connection per request.
func (d *run) request(ctx context.Context, app, url string, count int) (echo.Summary, error) {
	pod := d.pods[app]
	stdout, _, err := d.Cluster.Exec(ctx, Namespace, pod.Name, "", "/usr/local/bin/echo", "client", "--url", url,
		"--count", strconv.Itoa(count), "--new-conn", "--timeout", "3s", "--responses", "1")
	var s echo.Summary
	if jerr := json.Unmarshal([]byte(stdout), &s); jerr != nil {
		return s, fmt.Errorf("echo client in %s against %s: %w; output %q", pod.Name, url, errors.Join(err, jerr), stdout)
	}
	return s, nil
}

func (d *run) enrol(ctx context.Context) error {
	if err := d.label(ctx, `"ambient"`); err != nil {
		return err
	}
	began := time.Now()
	if err := d.waitRedirection(ctx, true); err != nil {
		return err
	}
	// The same pods, never restarted: capture was added inside their running network namespaces.
	restarts := 0
	for name, before := range d.pods {
		now, err := d.Cluster.Client.CoreV1().Pods(Namespace).Get(ctx, before.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading pod %s: %w", before.Name, err)
		}
		if now.UID != before.UID {
			return fmt.Errorf("pod %s (%s) was replaced on enrolment; want the same pod", before.Name, name)
		}
		for i, cs := range now.Status.ContainerStatuses {
			if cs.RestartCount != before.Status.ContainerStatuses[i].RestartCount {
				return fmt.Errorf("pod %s: container %s restarted on enrolment", now.Name, cs.Name)
			}
			restarts += int(cs.RestartCount)
		}
	}
	d.s.show("all 6 pods captured in %.1fs (annotation ambient.istio.io/redirection: enabled), the same pods, %d restarts", time.Since(began).Seconds(), restarts)
	return nil
}

// label sets (value a JSON string) or removes (value null) the namespace's dataplane-mode label.
func (d *run) label(ctx context.Context, value string) error {
	patch := `{"metadata":{"labels":{"istio.io/dataplane-mode":` + value + `}}}`
	_, err := d.Cluster.Client.CoreV1().Namespaces().Patch(ctx, Namespace, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("labelling namespace %s: %w", Namespace, err)
	}
	return nil
}

// waitRedirection waits until every sample pod is (or is no longer) annotated as captured.
func (d *run) waitRedirection(ctx context.Context, on bool) error {
	want := "captured"
	if !on {
		want = "released"
	}
	return d.Cluster.Wait(ctx, time.Minute, "every pod of "+Namespace+" "+want, func(ctx context.Context) (bool, error) {
		for _, p := range d.pods {
			now, err := d.Cluster.Client.CoreV1().Pods(Namespace).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			if (now.Annotations["ambient.istio.io/redirection"] == "enabled") != on {
				return false, nil
			}
		}
		return true, nil
	})
}

func (d *run) meshed(ctx context.Context) error {
	client := "spiffe://cluster.local/ns/" + Namespace + "/sa/client"
	nginx := "spiffe://cluster.local/ns/" + Namespace + "/sa/nginx"
	sum, err := d.request(ctx, "client", "http://"+d.nginxVIP+"/", 20)
	if err != nil {
		return err
	}
	if sum.OK != 20 {
		return fmt.Errorf("client -> nginx in the mesh: %d/20 answered (first error %q)", sum.OK, sum.FirstError)
	}
	seen, _, _ := strings.Cut(sum.Responses[0].SourceAddr, ":")
	if seen != d.pods["client"].Status.PodIP {
		return fmt.Errorf("nginx saw the source %s; want the client pod's IP %s", sum.Responses[0].SourceAddr, d.pods["client"].Status.PodIP)
	}
	d.s.show("client -> nginx: 20/20 answered, %s; nginx still sees the client's own IP %s", versions(sum), seen)
	for _, node := range []string{d.node1, d.node2} {
		n, err := d.waitMetric(ctx, node, client, nginx, `connection_security_policy="mutual_tls"`)
		if err != nil {
			return err
		}
		d.s.show("ztunnel on %s: %d connections %s -> %s, mutual_tls", node, n, client, nginx)
	}
	for _, svc := range []string{"hello", "world"} {
		vip, err := d.clusterIP(ctx, svc)
		if err != nil {
			return err
		}
		sum, err := d.request(ctx, "client", "http://"+vip+"/", 2)
		if err != nil {
			return err
		}
		if sum.OK != 2 {
			return fmt.Errorf("client -> %s in the mesh: %d/2 answered (first error %q)", svc, sum.OK, sum.FirstError)
		}
	}
	d.s.show("client -> hello and client -> world answer too")
	return nil
}

func (d *run) clusterIP(ctx context.Context, svc string) (string, error) {
	s, err := d.Cluster.Client.CoreV1().Services(Namespace).Get(ctx, svc, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading Service %s: %w", svc, err)
	}
	return s.Spec.ClusterIP, nil
}

func (d *run) ztunnelConfig(ctx context.Context) error {
	var out strings.Builder
	cmd := exec.CommandContext(ctx, d.Ambitctl, "--kubeconfig", d.Cluster.Kubeconfig, "ztunnel-config", "workloads", "--node", d.node2)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ambitctl ztunnel-config workloads: %w\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	shown := 0
	for i, l := range lines {
		if i == 0 || strings.HasPrefix(l, Namespace+" ") {
			fmt.Fprintf(d.Out, "     %s\n", l)
			shown++
		}
	}
	// A ztunnel holds its node's pods and the remote ones it has talked to (the client).
	for _, name := range []string{"nginx-v1", "hello", "client"} {
		if !hasRow(lines, d.pods[name].Name, "HBONE") {
			return fmt.Errorf("ztunnel-config workloads does not list %s with protocol HBONE:\n%s", d.pods[name].Name, out.String())
		}
	}
	d.s.show("%d workloads of %s: this node's pods and the remote client it served, every one reached over HBONE", shown-1, Namespace)
	return nil
}

func hasRow(lines []string, fields ...string) bool {
	for _, l := range lines {
		all := true
		for _, f := range fields {
			all = all && strings.Contains(l, f)
		}
		if all {
			return true
		}
	}
	return false
}

func (d *run) policy(ctx context.Context) error {
	if err := d.Cluster.Apply(ctx, Namespace, fmt.Sprintf(allowClient, Namespace)); err != nil {
		return err
	}
	url := "http://" + d.nginxVIP + "/"
	var other echo.Summary
	err := d.Cluster.Wait(ctx, 30*time.Second, "other refused by nginx", func(ctx context.Context) (bool, error) {
		var err error
		other, err = d.request(ctx, "other", url, 1)
		return err == nil && other.OK == 0 && other.Errors == 1, nil
	})
	if err != nil {
		return fmt.Errorf("%w: other -> nginx last got %d/1 answers (%q)", err, other.OK, other.FirstError)
	}
	d.s.show("other -> nginx: refused by the destination ztunnel (%s)", shortError(other.FirstError))
	sum, err := d.request(ctx, "client", url, 10)
	if err != nil {
		return err
	}
	if sum.OK != 10 {
		return fmt.Errorf("client -> nginx with the policy: %d/10 answered (first error %q); want all", sum.OK, sum.FirstError)
	}
	d.s.show("client -> nginx: 10/10 answered, %s", versions(sum))
	return nil
}

// shortError keeps the last part of a Go error chain ("read: connection reset by peer").
func shortError(e string) string {
	if i := strings.LastIndex(e, ": "); i >= 0 {
		if j := strings.LastIndex(e[:i], ": "); j >= 0 {
			return e[j+2:]
		}
	}
	return e
}

func (d *run) leave(ctx context.Context) error {
	if err := d.label(ctx, "null"); err != nil {
		return err
	}
	if err := d.waitRedirection(ctx, false); err != nil {
		return err
	}
	d.s.show("all 6 pods released (no redirection annotation), still running")
	if err := d.plaintext(ctx); err != nil {
		return err
	}
	// Outside the mesh no ztunnel enforces the policy any more.
	sum, err := d.request(ctx, "other", "http://"+d.nginxVIP+"/", 2)
	if err != nil {
		return err
	}
	if sum.OK != 2 {
		return fmt.Errorf("other -> nginx outside the mesh: %d/2 answered (first error %q); want all (no ztunnel to enforce the policy)", sum.OK, sum.FirstError)
	}
	d.s.show("other -> nginx answers again: L4 policy is the destination ztunnel's job, and it is out of the path")
	return nil
}
