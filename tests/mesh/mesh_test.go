package mesh

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/smoke"
)

var c *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(cluster.RunTests(m, cluster.Config{Nodes: 2}, &c))
}

// workloads: an echo server on node-2 and a client on node-1 (an echo server too, so that it
// has a readiness probe and a process to exec the client in), each with its own service
// account, so that each has its own SPIFFE identity. %[1]s is the server's node, %[2]s the
// client's.
const workloads = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: server}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: %[1]s
  serviceAccountName: server
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [server, --http, "8080", --tcp, "9000"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: SERVICE_ACCOUNT, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: %[2]s
  serviceAccountName: client
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [server, --http, "8080"]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`

// denyClient is an L4 policy on the server that refuses the client's identity.
const denyClient = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
`

// TestAmbient installs the mesh, checks the L4 data path and capture end to end with each
// redirection backend (switching the cni agents from one to the other as an upgrade would),
// then uninstalls it.
func TestAmbient(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	start := time.Now()
	backends := []string{"nftables", "ebpf"}
	mesh, err := Install(ctx, c, Options{Backend: backends[0]})
	t.Cleanup(func() {
		// A failed test still leaves a clean cluster for the leak check.
		if mesh != nil {
			mesh.Uninstall(context.Background())
		}
	})
	if err != nil {
		t.Fatalf("installing the mesh: %v", err)
	}
	t.Logf("mesh installed in %v: istiod at %s", time.Since(start).Round(time.Millisecond), mesh.IstiodIP)

	for i, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			if i > 0 {
				if err := mesh.SetBackend(ctx, backend, 2*time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			checkBackend(ctx, t, backend)
			// Both ways into the mesh: running pods enrolled when their namespace is
			// labelled (agent informers), and new pods enrolled during CNI ADD.
			checkDataPath(ctx, t, i == 0)
			t.Run("capture", func(t *testing.T) { checkCapture(ctx, t, backend, i) })
		})
	}

	logProblems(ctx, t)

	t.Run("uninstall removes everything", func(t *testing.T) {
		// Pods still enrolled when the mesh goes must keep talking, in plaintext: their
		// redirection goes with the mesh.
		ns := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
		if err := c.Apply(ctx, ns, fmt.Sprintf(workloads, c.Nodes[1].Name, c.Nodes[0].Name)); err != nil {
			t.Fatal(err)
		}
		server := waitEnrolled(ctx, t, ns, "server")
		waitEnrolled(ctx, t, ns, "client")
		m := mesh
		mesh = nil
		if err := m.Uninstall(ctx); err != nil {
			t.Fatal(err)
		}
		checkUninstalled(ctx, t)
		if _, err := runClient(ctx, ns, fmt.Sprintf("http://%s:8080/", server.Status.PodIP), 1, ""); err != nil {
			t.Errorf("pods enrolled before the uninstall cannot talk after it: %v", err)
		}
	})
}

// logProblems logs the WARN and ERROR lines of the mesh components' logs, so that a passing
// run still shows what its components complained about.
func logProblems(ctx context.Context, t *testing.T) {
	pods, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		logs, err := c.Logs(ctx, Namespace, p.Name, "")
		if err != nil {
			t.Logf("%v", err)
			continue
		}
		var problems []string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				problems = append(problems, l)
			}
		}
		if len(problems) > 0 {
			t.Logf("%s on %s: %d warnings and errors:\n  %s", p.Name, p.Spec.NodeName, len(problems), strings.Join(problems, "\n  "))
		}
	}
}

// checkBackend checks that every cni agent says it runs backend.
func checkBackend(ctx context.Context, t *testing.T, backend string) {
	t.Helper()
	agents, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=istio-cni-node"})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents.Items {
		if a.DeletionTimestamp != nil {
			continue // an agent of the previous rollout, on its way out
		}
		// A Ready agent may not have flushed its first lines to the log yet.
		var logs string
		err := c.Wait(ctx, 30*time.Second, "cni agent "+a.Name+" naming its backend", func(ctx context.Context) (bool, error) {
			var err error
			logs, err = c.Logs(ctx, Namespace, a.Name, "")
			return err == nil && strings.Contains(logs, "backend="+backend), nil
		})
		if err != nil {
			t.Fatalf("cni agent %s on %s does not say it runs the %s backend: %v\n%s", a.Name, a.Spec.NodeName, backend, err, logs)
		}
	}
}

// checkDataPath enrols a server on node-2 and a client on node-1 in an ambient namespace
// and checks their traffic and an L4 policy. With labelLater the pods start outside the mesh
// and the namespace is labelled once they run; otherwise they start in an ambient namespace.
func checkDataPath(ctx context.Context, t *testing.T, labelLater bool) {
	serverNode, clientNode := c.Nodes[1].Name, c.Nodes[0].Name
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	var ns string
	if labelLater {
		ns = c.Namespace(t, nil)
	} else {
		ns = c.Namespace(t, ambient)
	}
	if err := c.Apply(ctx, ns, fmt.Sprintf(workloads, serverNode, clientNode)); err != nil {
		t.Fatal(err)
	}
	if labelLater {
		for _, app := range []string{"server", "client"} {
			if _, err := c.WaitForPods(ctx, ns, "app="+app, 1, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		patch := `{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`
		if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatalf("labelling namespace %s: %v", ns, err)
		}
		t.Logf("namespace %s labelled istio.io/dataplane-mode=ambient with its pods running", ns)
	}
	server := waitEnrolled(ctx, t, ns, "server")
	client := waitEnrolled(ctx, t, ns, "client")
	serverURL := fmt.Sprintf("http://%s:8080/", server.Status.PodIP)
	clientID := "spiffe://cluster.local/ns/" + ns + "/sa/client"
	serverID := "spiffe://cluster.local/ns/" + ns + "/sa/server"

	ok := t.Run("traffic goes through both ztunnels with mTLS identities", func(t *testing.T) {
		capture, err := c.CaptureFabric(filepath.Join(t.TempDir(), "fabric.pcap"))
		if err != nil {
			t.Fatal(err)
		}
		marker := "ambit-marker-" + ns
		s, err := runClient(ctx, ns, serverURL, 5, marker)
		path, stopErr := capture.Stop()
		if err != nil {
			t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
		}
		if stopErr != nil {
			t.Fatal(stopErr)
		}
		if s.ByPod["server"] != 5 {
			t.Errorf("answers by %v; want 5 by server", s.ByPod)
		}
		// ztunnel delivers inbound connections from the client's own address.
		if seen, _, _ := net.SplitHostPort(s.Responses[0].SourceAddr); seen != client.Status.PodIP {
			t.Errorf("server saw source %s; want the client pod's IP %s", s.Responses[0].SourceAddr, client.Status.PodIP)
		}
		if capture.Bytes() == 0 {
			t.Fatalf("the fabric capture %s saw nothing", path)
		}
		if capture.Contains([]byte(marker)) {
			t.Errorf("the payload %q crossed the fabric in clear (capture %s); want it only inside TLS on 15008", marker, path)
		}
		// The connection crossed as HBONE: client pod -> server pod port 15008, never to 8080.
		flows, err := tcpFlows(path)
		if err != nil {
			t.Fatal(err)
		}
		clientIP, serverIP := netip.MustParseAddr(client.Status.PodIP), netip.MustParseAddr(server.Status.PodIP)
		if n := flows[flow{clientIP, serverIP, 15008}]; n == 0 {
			t.Errorf("no TCP frame from %s to %s:15008 on the fabric; flows %v", clientIP, serverIP, flows)
		}
		if n := flows[flow{clientIP, serverIP, 8080}]; n != 0 {
			t.Errorf("%d TCP frames from %s to %s:8080 crossed the fabric; want all traffic tunnelled on 15008", n, clientIP, serverIP)
		}

		// Both ztunnels count the connections with both identities, as mutual TLS.
		for _, node := range []string{clientNode, serverNode} {
			line, err := waitMetric(ctx, node, "istio_tcp_connections_opened_total", clientID, serverID, `connection_security_policy="mutual_tls"`)
			if err != nil {
				t.Errorf("ztunnel on %s: %v%s", node, err, Diagnose(ctx, c, "app=ztunnel"))
				continue
			}
			t.Logf("ztunnel on %s: %s", node, line)
		}
	})
	if !ok {
		return
	}

	t.Run("L4 DENY policy refuses the client", func(t *testing.T) {
		policy := fmt.Sprintf(denyClient, ns)
		if err := c.Apply(ctx, ns, policy); err != nil {
			t.Fatal(err)
		}
		var last smoke.Summary
		err := c.Wait(ctx, 30*time.Second, "the client refused", func(ctx context.Context) (bool, error) {
			last, _ = runClient(ctx, ns, serverURL, 1, "")
			return last.OK == 0 && last.Errors == 1, nil
		})
		if err != nil {
			t.Fatalf("%v; last answer %+v%s", err, last, Diagnose(ctx, c, "app=ztunnel"))
		}
		t.Logf("refused: %s", last.FirstError)
		// The client's ztunnel logs the destination's refusal, naming the policy.
		zt, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel",
			FieldSelector: "spec.nodeName=" + c.Nodes[0].Name})
		if err != nil || len(zt.Items) != 1 {
			t.Fatalf("finding the ztunnel on %s: %d pods, %v", c.Nodes[0].Name, len(zt.Items), err)
		}
		logs, err := c.Logs(ctx, Namespace, zt.Items[0].Name, "")
		if err != nil {
			t.Fatal(err)
		}
		if want := "denied by policy " + ns + "/deny-client"; !strings.Contains(logs, want) {
			t.Errorf("ztunnel %s's log does not say %q:\n%s", zt.Items[0].Name, want, logs)
		}
		// istiod-lite says the policy is enforced as written (its status writer's RBAC).
		var accepted string
		err = c.Wait(ctx, 30*time.Second, "condition ZtunnelAccepted on deny-client", func(ctx context.Context) (bool, error) {
			accepted, _ = c.Kubectl(ctx, "get", "authorizationpolicy", "-n", ns, "deny-client",
				"-o", `jsonpath={.status.conditions[?(@.type=="ZtunnelAccepted")].status}`)
			return accepted == "True", nil
		})
		if err != nil {
			t.Errorf("%v: got %q; want True%s", err, accepted, Diagnose(ctx, c, "app=istiod"))
		}
		// Removing the policy lets the client in again.
		if err := c.Delete(ctx, ns, policy); err != nil {
			t.Fatal(err)
		}
		err = c.Wait(ctx, 30*time.Second, "the client allowed again", func(ctx context.Context) (bool, error) {
			last, _ = runClient(ctx, ns, serverURL, 1, "")
			return last.OK == 1, nil
		})
		if err != nil {
			t.Fatalf("%v; last answer %+v", err, last)
		}
	})
}

// waitEnrolled waits for a pod to be Ready and annotated by the cni agent as captured.
func waitEnrolled(ctx context.Context, t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	if _, err := c.WaitForPods(ctx, ns, "app="+name, 1, 2*time.Minute); err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	var pod *corev1.Pod
	err := c.Wait(ctx, time.Minute, "pod "+name+" enrolled (ambient.istio.io/redirection: enabled)", func(ctx context.Context) (bool, error) {
		var err error
		pod, err = c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return pod.Annotations["ambient.istio.io/redirection"] == "enabled", nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	return pod
}

// runClient runs the echo client in the client pod against url; a payload is sent as a POST
// body and echoed back.
func runClient(ctx context.Context, ns, url string, count int, payload string) (smoke.Summary, error) {
	return runClientIn(ctx, ns, "client", url, count, payload)
}

// runClientIn runs the echo client in pod against url, one connection per request.
func runClientIn(ctx context.Context, ns, pod, url string, count int, payload string) (smoke.Summary, error) {
	args := []string{"/usr/local/bin/echo", "client", "--url", url, "--count", fmt.Sprint(count), "--new-conn", "--timeout", "5s"}
	if payload != "" {
		args = append(args, "--payload", payload)
	}
	stdout, _, err := c.Exec(ctx, ns, pod, "", args...)
	var s smoke.Summary
	if jerr := decode(stdout, &s); jerr != nil {
		return s, fmt.Errorf("echo client in %s against %s: output %q: %w", pod, url, stdout, errors.Join(jerr, err))
	}
	if err != nil {
		return s, fmt.Errorf("echo client against %s: %d/%d ok, first error %q: %w", url, s.OK, count, s.FirstError, err)
	}
	if s.OK != count {
		return s, fmt.Errorf("echo client against %s: %d/%d ok, first error %q", url, s.OK, count, s.FirstError)
	}
	return s, nil
}

// waitMetric polls the metrics of the ztunnel on node until a line of metric names every one
// of want, and returns it.
func waitMetric(ctx context.Context, node, metric string, want ...string) (string, error) {
	pods, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel",
		FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return "", fmt.Errorf("finding the ztunnel pod on %s: %w", node, err)
	}
	if len(pods.Items) != 1 {
		return "", fmt.Errorf("finding the ztunnel pod on %s: %d pods; want 1", node, len(pods.Items))
	}
	url := fmt.Sprintf("http://%s:15020/metrics", pods.Items[0].Status.PodIP)
	var found, lastErr string
	err = c.Wait(ctx, 15*time.Second, metric+" on "+node, func(ctx context.Context) (bool, error) {
		resp, err := c.HTTPClient().Get(url)
		if err != nil {
			lastErr = err.Error()
			return false, nil
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, metric+"{") {
				continue
			}
			all := true
			for _, w := range want {
				all = all && strings.Contains(line, w)
			}
			if all {
				found = line
				return true, nil
			}
		}
		lastErr = "no line of " + metric + " with " + strings.Join(want, " and ")
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, lastErr)
	}
	return found, nil
}

// checkUninstalled checks that nothing of the mesh remains: no objects, no ambit-cni entry in
// any node's CNI config, and pods start again without the agent.
func checkUninstalled(ctx context.Context, t *testing.T) {
	t.Helper()
	crs, err := c.Client.RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=ambit"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cr := range crs.Items {
		t.Errorf("ClusterRole %s remains", cr.Name)
	}
	crbs, err := c.Client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=ambit"})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range crbs.Items {
		t.Errorf("ClusterRoleBinding %s remains", b.Name)
	}
	cms, err := c.Client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=istio-ca-root-cert"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		t.Errorf("ConfigMap %s/%s remains", cm.Namespace, cm.Name)
	}
	for _, n := range c.Nodes {
		cmd, err := c.NodeCommand(n.Name, "sh", "-c", "cat /etc/cni/net.d/*.conflist; ls /opt/cni/bin")
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("reading %s's CNI config: %v: %s", n.Name, err, out)
		}
		if strings.Contains(string(out), "ambit-cni") {
			t.Errorf("%s still has ambit-cni in its CNI config or bin dir after uninstall:\n%s", n.Name, out)
		}
		// The agent's one host rule (kubelet probes SNATed to 169.254.7.127) goes with it.
		cmd, err = c.NodeCommand(n.Name, "nft", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		if out, err = cmd.CombinedOutput(); err != nil {
			t.Fatalf("listing %s's nftables ruleset: %v: %s", n.Name, err, out)
		}
		if strings.Contains(string(out), "169.254.7.127") {
			var lines []string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "table ") || strings.Contains(l, "169.254.7.127") {
					lines = append(lines, l)
				}
			}
			t.Errorf("%s still has the probe SNAT rule after uninstall:\n%s", n.Name, strings.Join(lines, "\n"))
		}
	}
	// A new pod on each node must start: a CNI chain still calling the gone agent would fail it.
	ns := c.Namespace(t, nil)
	for _, n := range c.Nodes {
		pod := fmt.Sprintf(`{apiVersion: v1, kind: Pod, metadata: {name: after-%[1]s, labels: {app: after}}, spec: {nodeName: %[1]s,
  containers: [{name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}]}}`, n.Name)
		if err := c.Apply(ctx, ns, pod); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitForPods(ctx, ns, "app=after", len(c.Nodes), time.Minute); err != nil {
		t.Errorf("pods do not start after uninstall: %v", err)
	}
}

func decode(s string, v any) error {
	return json.Unmarshal([]byte(s), v)
}
