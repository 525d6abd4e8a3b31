package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/ambitctl/install"
	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/smoke"
)

// failOpenGrace is the cni agents' fail-open grace period in this test: short, so the test
// does not wait long, and still above ztunnel's reconnect backoff.
const failOpenGrace = "6s"

// failOpenServer is a plain echo server outside the mesh; %[1]s is its node.
const failOpenServer = `
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: %[1]s
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [server, --http, "8080"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`

// failOpenClients are two enrolled clients on node %[1]s, each with its own identity: fo
// annotated fail-open, fc with the default (fail-closed). They are echo servers so that they
// have a readiness probe and the echo binary to exec.
const failOpenClients = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: fo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: fc}
---
apiVersion: v1
kind: Pod
metadata:
  name: fo
  labels: {app: fo}
  annotations: {ambient.ambit.dev/fail-open: "true"}
spec:
  nodeName: %[1]s
  serviceAccountName: fo
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [server, --http, "8080"]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: fc, labels: {app: fc}}
spec:
  nodeName: %[1]s
  serviceAccountName: fc
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [server, --http, "8080"]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`

// TestFailOpen takes ztunnel away from one node, with each redirection backend: past the
// grace period the fail-open client there reaches a server directly while the fail-closed
// one cannot connect; when ztunnel returns both are captured and counted by it again.
func TestFailOpen(t *testing.T) {
	cluster.Require(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	backends := []string{"nftables", "ebpf"}
	mesh, err := Install(ctx, c, Options{Backend: backends[0]})
	t.Cleanup(func() {
		if mesh != nil {
			mesh.Uninstall(context.Background())
		}
	})
	if err != nil {
		t.Fatalf("installing the mesh: %v", err)
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			if err := failOpenSetAgents(ctx, mesh, backend); err != nil {
				t.Fatal(err)
			}
			checkBackend(ctx, t, backend)
			checkFailOpen(ctx, t)
		})
	}
}

// failOpenSetAgents re-applies the cni chart with backend and the test's grace period and
// waits for the new agents.
func failOpenSetAgents(ctx context.Context, m *Mesh, backend string) error {
	values := cniValues(backend)
	values["failOpenGracePeriod"] = failOpenGrace
	doc, err := render(install.CNI, values)
	if err != nil {
		return err
	}
	if err := m.c.Apply(ctx, Namespace, doc); err != nil {
		return fmt.Errorf("applying chart %s: %w", install.CNI, err)
	}
	m.manifests[m.cni] = doc
	if _, err := m.c.WaitForDaemonSet(ctx, Namespace, "istio-cni-node", 2*time.Minute); err != nil {
		return fmt.Errorf("DaemonSet istio-cni-node not ready: %w%s", err, Diagnose(ctx, m.c, "k8s-app=istio-cni-node"))
	}
	return nil
}

func checkFailOpen(ctx context.Context, t *testing.T) {
	serverNode, clientNode := c.Nodes[0].Name, c.Nodes[1].Name
	serverNS := c.Namespace(t, nil)
	clientNS := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	if err := c.Apply(ctx, serverNS, fmt.Sprintf(failOpenServer, serverNode)); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, clientNS, fmt.Sprintf(failOpenClients, clientNode)); err != nil {
		t.Fatal(err)
	}
	servers, err := c.WaitForPods(ctx, serverNS, "app=server", 1, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:8080/", servers[0].Status.PodIP)
	waitEnrolled(ctx, t, clientNS, "fo")
	waitEnrolled(ctx, t, clientNS, "fc")
	for _, pod := range []string{"fo", "fc"} {
		if s, err := failOpenRequest(ctx, clientNS, pod, url); err != nil || s.OK != 1 {
			t.Fatalf("%s before the outage: %+v, %v", pod, s, err)
		}
	}

	restore := failOpenRemoveZtunnel(ctx, t, clientNode)
	var last string
	err = c.Wait(ctx, time.Minute, "the fail-open pod to bypass capture", func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(clientNS).Get(ctx, "fo", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = fmt.Sprint(p.Annotations)
		return p.Annotations["ambient.ambit.dev/redirection"] == "bypassed" && p.Annotations["ambient.istio.io/redirection"] == "", nil
	})
	if err != nil {
		t.Fatalf("%v: annotations %s%s", err, last, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	// Nothing on the node proxies any more: an answer means a direct connection.
	if s, err := failOpenRequest(ctx, clientNS, "fo", url); err != nil || s.OK != 1 {
		t.Errorf("fail-open pod with ztunnel gone: %+v, %v; want the server reached directly", s, err)
	}
	if s, err := failOpenRequest(ctx, clientNS, "fc", url); s.OK != 0 || s.Errors != 1 {
		t.Errorf("fail-closed pod with ztunnel gone: %+v, %v; want its one request to fail", s, err)
	} else {
		t.Logf("fail-closed pod with ztunnel gone: %s", s.FirstError)
	}
	if p, err := c.Client.CoreV1().Pods(clientNS).Get(ctx, "fc", metav1.GetOptions{}); err != nil || p.Annotations["ambient.istio.io/redirection"] != "enabled" {
		t.Errorf("fail-closed pod while ztunnel is gone: annotations %v, %v; want it still captured", p.Annotations, err)
	}
	failOpenCheckAgentLog(ctx, t, clientNode, clientNS+"/fo")
	failOpenCheckEvent(ctx, t, clientNS, "fo", "FailOpenBypassed", "Warning")

	restore()
	waitEnrolled(ctx, t, clientNS, "fo")
	failOpenCheckEvent(ctx, t, clientNS, "fo", "FailOpenRestored", "Normal")
	for _, pod := range []string{"fo", "fc"} {
		var s smoke.Summary
		err := c.Wait(ctx, time.Minute, pod+" reaching the server through the returned ztunnel", func(ctx context.Context) (bool, error) {
			var rerr error
			s, rerr = failOpenRequest(ctx, clientNS, pod, url)
			return rerr == nil && s.OK == 1, nil
		})
		if err != nil {
			t.Errorf("%v: last %+v%s", err, s, Diagnose(ctx, c, "app=ztunnel"))
			continue
		}
		// The new ztunnel counts the pod's connection as its own: the pod is meshed again.
		id := fmt.Sprintf("%q", "spiffe://cluster.local/ns/"+clientNS+"/sa/"+pod)
		line, err := waitMetric(ctx, clientNode, "istio_tcp_connections_opened_total", `reporter="source"`, id)
		if err != nil {
			t.Errorf("%s after ztunnel returned: %v", pod, err)
			continue
		}
		t.Logf("%s meshed again: %s", pod, line)
	}
}

// failOpenRemoveZtunnel makes the ztunnel DaemonSet skip node and waits until its pod there is
// gone; the returned function (also run at cleanup) puts it back and waits for it to be ready.
func failOpenRemoveZtunnel(ctx context.Context, t *testing.T, node string) (restore func()) {
	t.Helper()
	dss := c.Client.AppsV1().DaemonSets(Namespace)
	ds, err := dss.Get(ctx, "ztunnel", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, n := range c.Nodes {
		if n.Name != node {
			keep = append(keep, n.Name)
		}
	}
	if len(keep) != 1 {
		t.Fatalf("the test needs 2 nodes; have %d", len(c.Nodes))
	}
	patch := func(ctx context.Context, sel map[string]string) error {
		var v any = sel
		if sel == nil {
			v = nil // null removes the field
		}
		b, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{"nodeSelector": v}}}})
		_, err := dss.Patch(ctx, "ztunnel", types.MergePatchType, b, metav1.PatchOptions{})
		return err
	}
	old := ds.Spec.Template.Spec.NodeSelector
	sel := map[string]string{"kubernetes.io/hostname": keep[0]}
	for k, v := range old {
		if k != "kubernetes.io/hostname" {
			sel[k] = v
		}
	}
	if err := patch(ctx, sel); err != nil {
		t.Fatalf("keeping ztunnel off %s: %v", node, err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if err := patch(ctx, nil); err != nil {
			t.Errorf("putting ztunnel back on %s: %v", node, err)
			return
		}
		if old != nil {
			if err := patch(ctx, old); err != nil {
				t.Errorf("restoring ztunnel's node selector: %v", err)
				return
			}
		}
		if _, err := c.WaitForDaemonSet(ctx, Namespace, "ztunnel", 2*time.Minute); err != nil {
			t.Errorf("ztunnel back on %s: %v%s", node, err, Diagnose(ctx, c, "app=ztunnel"))
		}
	}
	t.Cleanup(restore)
	err = c.Wait(ctx, 2*time.Minute, "ztunnel gone from "+node, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel", FieldSelector: "spec.nodeName=" + node})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("ztunnel gone from %s", node)
	return restore
}

// failOpenCheckAgentLog checks that the cni agent on node logged that pod bypasses the mesh.
func failOpenCheckAgentLog(ctx context.Context, t *testing.T, node, pod string) {
	t.Helper()
	agents, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=istio-cni-node", FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(agents.Items) != 1 {
		t.Fatalf("finding the cni agent on %s: %d pods, %v", node, len(agents.Items), err)
	}
	logs, err := c.Logs(ctx, Namespace, agents.Items[0].Name, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "bypasses the mesh") && strings.Contains(l, "pod="+pod) {
			t.Logf("agent on %s: %s", node, l)
			return
		}
	}
	t.Errorf("the cni agent on %s did not log that %s bypasses the mesh:\n%s", node, pod, logs)
}

// failOpenCheckEvent checks that the cni agent recorded an event of type typ and reason on
// pod, as `kubectl describe pod` shows it.
func failOpenCheckEvent(ctx context.Context, t *testing.T, ns, pod, reason, typ string) {
	t.Helper()
	sel := "involvedObject.kind=Pod,involvedObject.name=" + pod + ",reason=" + reason
	var last string
	err := c.Wait(ctx, 30*time.Second, "event "+reason+" on pod "+pod, func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, ev := range evs.Items {
			last = fmt.Sprintf("%s %s from %s: %s", ev.Type, ev.Reason, ev.Source.Component, ev.Message)
			if ev.Type == typ {
				t.Logf("event on %s: %s", pod, last)
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("%v: last seen %q", err, last)
	}
}

// failOpenRequest sends one request from pod to url over a new connection.
func failOpenRequest(ctx context.Context, ns, pod, url string) (smoke.Summary, error) {
	stdout, _, err := c.Exec(ctx, ns, pod, "", "/usr/local/bin/echo", "client", "--url", url, "--count", "1", "--new-conn", "--timeout", "5s")
	var s smoke.Summary
	if jerr := json.Unmarshal([]byte(stdout), &s); jerr != nil {
		return s, fmt.Errorf("echo client in %s against %s: output %q: %w", pod, url, stdout, errors.Join(jerr, err))
	}
	if err != nil {
		return s, fmt.Errorf("echo client in %s against %s: first error %q: %w", pod, url, s.FirstError, err)
	}
	return s, nil
}
