package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// captureWorkloads are the pods of checkCapture: an echo server on node-2 (HTTP 8080, TCP
// 9000 and 9001), and on node-1 two mesh clients with their own identities, a pod that opts
// out with istio.io/dataplane-mode=none and a host-network pod. Only server and client have
// readiness probes (the probe checks need them, the others need not load the kubelet).
// %[1]s is the server's node, %[2]s the clients', %[3]d the host-network pod's port.
const captureWorkloads = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: server}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: other}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: burst}
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
    args: [server, --http, "8080", --tcp, "9000,9001"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
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
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: other}}
spec:
  nodeName: %[2]s
  serviceAccountName: other
  containers:
  - {name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, labels: {app: optout, istio.io/dataplane-mode: none}}
spec:
  nodeName: %[2]s
  containers:
  - {name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: hostnet}}
spec:
  nodeName: %[2]s
  hostNetwork: true
  containers:
  - {name: echo, image: ambit.local/echo:dev, imagePullPolicy: Never, args: [server, --http, "%[3]d"]}
`

// burstPod starts sending at once: its only container is the echo client, making one request
// (one connection) with a marker payload. %[1]s is its node, %[2]s the server URL, %[3]s the
// marker.
const burstPod = `
apiVersion: v1
kind: Pod
metadata: {name: burst, labels: {app: burst}}
spec:
  nodeName: %[1]s
  serviceAccountName: burst
  restartPolicy: Never
  containers:
  - name: echo
    image: ambit.local/echo:dev
    imagePullPolicy: Never
    args: [client, --url, "%[2]s", --count, "1", --payload, "%[3]s", --timeout, 10s]
`

// capture holds what the steps of checkCapture share.
type capture struct {
	ns, backend            string
	serverNode, clientNode string
	pods                   map[string]*corev1.Pod // by app label, as first seen Ready
	starts                 map[string]string      // container restart counts and start times before enrolment
	serverReadySince       metav1.Time
	serverURL              string
	clientID, serverID     string
}

// checkCapture checks how pods enter and leave the mesh with the agents' current backend:
// running pods captured by labelling their namespace without a restart, opt-outs and
// host-network pods left alone, a new pod's first request already mTLS, L4 policies
// (STRICT, ALLOW, DENY on an open connection), an agent restart and a ztunnel restart
// that keep or restore captured traffic, kubelet probes that bypass ztunnel, and the way
// back to direct traffic when the label goes. The steps share one namespace and its pods.
func checkCapture(ctx context.Context, t *testing.T, backend string, run int) {
	cp := &capture{backend: backend, serverNode: c.Nodes[1].Name, clientNode: c.Nodes[0].Name, pods: map[string]*corev1.Pod{}}
	cp.ns = c.Namespace(t, nil)
	// The host-network pod listens on the node: each run gets its own port, since the
	// previous run's pod may still be ending.
	if err := c.Apply(ctx, cp.ns, fmt.Sprintf(captureWorkloads, cp.serverNode, cp.clientNode, 18081+run)); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"server", "client", "other", "optout", "hostnet"} {
		pods, err := c.WaitForPods(ctx, cp.ns, "app="+app, 1, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		cp.pods[app] = &pods[0]
	}
	cp.starts = containerStarts(cp.pods)
	cp.serverReadySince = readySince(cp.pods["server"])
	cp.serverURL = fmt.Sprintf("http://%s:8080/", cp.pods["server"].Status.PodIP)
	cp.clientID = "spiffe://cluster.local/ns/" + cp.ns + "/sa/client"
	cp.serverID = "spiffe://cluster.local/ns/" + cp.ns + "/sa/server"

	patch := `{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`
	if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, cp.ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("labelling namespace %s: %v", cp.ns, err)
	}
	for _, app := range []string{"server", "client", "other"} {
		cp.pods[app] = waitEnrolled(ctx, t, cp.ns, app)
	}

	t.Run("labelling the namespace captures running pods without restarting them", func(t *testing.T) { cp.checkLabelled(ctx, t) })
	t.Run("opted-out and host-network pods stay out", func(t *testing.T) { cp.checkOptOut(ctx, t) })
	t.Run("the first request of a new pod is already mTLS", func(t *testing.T) { cp.checkFirstRequest(ctx, t) })

	// STRICT from here on: plaintext that slipped past capture would now be refused, which
	// the agent restart and probe checks rely on.
	strictOK := t.Run("STRICT refuses plaintext from outside the mesh", func(t *testing.T) { cp.checkStrict(ctx, t) })
	t.Run("ALLOW admits only the named principal", func(t *testing.T) { cp.checkAllow(ctx, t) })
	t.Run("DENY closes an open connection it now denies", func(t *testing.T) { cp.checkDenyOpen(ctx, t) })
	if strictOK {
		t.Run("a node agent restart keeps captured traffic", func(t *testing.T) { cp.checkAgentRestart(ctx, t) })
		t.Run("kubelet probes bypass ztunnel", func(t *testing.T) { cp.checkProbes(ctx, t) })
	}
	t.Run("a ztunnel rolling update gets the full replay and fails no new connection", func(t *testing.T) { cp.checkZtunnelRestart(ctx, t) })
	t.Run("a control plane restart fails no new connection", func(t *testing.T) { cp.checkControlPlaneRestart(ctx, t) })
	if err := c.Delete(ctx, cp.ns, strictMTLS); err != nil {
		t.Fatal(err)
	}
	t.Run("removing the label returns pods to direct traffic", func(t *testing.T) { cp.checkUnlabelled(ctx, t) })
}

// containerStarts describes each pod's containers by restart count and start time.
func containerStarts(pods map[string]*corev1.Pod) map[string]string {
	out := map[string]string{}
	for app, p := range pods {
		var parts []string
		for _, s := range p.Status.ContainerStatuses {
			started := "not running"
			if s.State.Running != nil {
				started = s.State.Running.StartedAt.UTC().Format(time.RFC3339)
			}
			parts = append(parts, fmt.Sprintf("%s: id %s, restarts %d, started %s", s.Name, s.ContainerID, s.RestartCount, started))
		}
		out[app] = strings.Join(parts, "; ")
	}
	return out
}

// readySince is when the pod last turned Ready.
func readySince(p *corev1.Pod) metav1.Time {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return cond.LastTransitionTime
		}
	}
	return metav1.Time{}
}

// checkRestarts fails t if a container of the enrolled pods restarted since before enrolment.
func (cp *capture) checkRestarts(ctx context.Context, t *testing.T) {
	t.Helper()
	now := map[string]*corev1.Pod{}
	for app := range cp.pods {
		p, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, cp.pods[app].Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now[app] = p
	}
	for app, after := range containerStarts(now) {
		if before := cp.starts[app]; after != before {
			t.Errorf("pod %s's containers changed: before enrolment %s; now %s", app, before, after)
		}
	}
}

func (cp *capture) checkLabelled(ctx context.Context, t *testing.T) {
	cp.checkRestarts(ctx, t)
	client := cp.pods["client"]
	s, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, "")
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	for _, r := range s.Responses {
		if ip, _, _ := net.SplitHostPort(r.SourceAddr); ip != client.Status.PodIP {
			t.Errorf("server saw source %s; want the client pod's IP %s", r.SourceAddr, client.Status.PodIP)
		}
	}
	// The pods' namespace was never in the mesh before, so every connection counted for
	// these identities was made after the label, by the pods already running.
	for _, node := range []string{cp.clientNode, cp.serverNode} {
		var n float64
		err := c.Wait(ctx, 15*time.Second, "3 connections counted on "+node, func(ctx context.Context) (bool, error) {
			v, err := connectionsOpened(ctx, node, `source_principal="`+cp.clientID+`"`, `destination_principal="`+cp.serverID+`"`, `connection_security_policy="mutual_tls"`)
			n = v
			return err == nil && v >= 3, nil
		})
		if err != nil {
			t.Errorf("ztunnel on %s counts %v mutual-TLS connections from client to server: %v", node, n, err)
		}
	}
}

func (cp *capture) checkOptOut(ctx context.Context, t *testing.T) {
	for _, app := range []string{"optout", "hostnet"} {
		p, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := p.Annotations["ambient.istio.io/redirection"]; ok {
			t.Errorf("pod %s has ambient.istio.io/redirection=%q; want no annotation", app, v)
		}
		// Both talk to the server directly, from their own address.
		s, err := runClientIn(ctx, cp.ns, app, cp.serverURL, 2, "")
		if err != nil {
			t.Errorf("%s -> server: %v", app, err)
			continue
		}
		if ip, _, _ := net.SplitHostPort(s.Responses[0].SourceAddr); ip != p.Status.PodIP {
			t.Errorf("%s -> server: the server saw %s; want %s's own address %s", app, s.Responses[0].SourceAddr, app, p.Status.PodIP)
		}
	}
	// Captured, either would have been counted with its identity (both run as the
	// namespace's default service account); neither ztunnel may know it.
	defaultID := `principal="spiffe://cluster.local/ns/` + cp.ns + `/sa/default"`
	for _, node := range []string{cp.clientNode, cp.serverNode} {
		n, err := connectionsOpened(ctx, node, defaultID)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("ztunnel on %s counts %v connections of the default service account's pods (optout, hostnet); want 0", node, n)
		}
	}
	ztName, logs := ztunnelLogs(ctx, t, cp.clientNode)
	for _, app := range []string{"optout", "hostnet"} {
		if uid := string(cp.pods[app].UID); strings.Contains(logs, uid) {
			t.Errorf("ztunnel %s's log names pod %s (uid %s); it must never have been handed to ztunnel", ztName, app, uid)
		}
	}
}

func (cp *capture) checkFirstRequest(ctx context.Context, t *testing.T) {
	marker := "ambit-first-" + cp.ns
	capture, err := c.CaptureFabric(filepath.Join(t.TempDir(), "fabric.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, cp.ns, fmt.Sprintf(burstPod, cp.clientNode, cp.serverURL, marker)); err != nil {
		capture.Stop()
		t.Fatal(err)
	}
	var pod *corev1.Pod
	err = c.Wait(ctx, 2*time.Minute, "pod burst finished", func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, "burst", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, nil
	})
	path, stopErr := capture.Stop()
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	if stopErr != nil {
		t.Fatal(stopErr)
	}
	out, err := c.Logs(ctx, cp.ns, "burst", "")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		OK        int `json:"ok"`
		Responses []struct {
			SourceAddr string `json:"sourceAddr"`
			Error      string `json:"error"`
		} `json:"responses"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || pod.Status.Phase != corev1.PodSucceeded || s.OK != 1 {
		t.Fatalf("pod burst ended %s; its first request failed: %s%s", pod.Status.Phase, out, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	if pod.Annotations["ambient.istio.io/redirection"] != "enabled" {
		t.Errorf("pod burst is not annotated ambient.istio.io/redirection=enabled: %v", pod.Annotations)
	}
	if ip, _, _ := net.SplitHostPort(s.Responses[0].SourceAddr); ip != pod.Status.PodIP {
		t.Errorf("server saw %s; want the burst pod's IP %s", s.Responses[0].SourceAddr, pod.Status.PodIP)
	}
	if capture.Bytes() == 0 {
		t.Fatalf("the fabric capture %s saw nothing", path)
	}
	if capture.Contains([]byte(marker)) {
		t.Errorf("the first request's payload %q crossed the fabric in clear (capture %s)", marker, path)
	}
	// The pod made one connection in its life: the server's ztunnel counted exactly one,
	// as mutual TLS with the pod's identity.
	burstID := `source_principal="spiffe://cluster.local/ns/` + cp.ns + `/sa/burst"`
	var n float64
	err = c.Wait(ctx, 15*time.Second, "the burst pod's connection counted", func(ctx context.Context) (bool, error) {
		v, err := connectionsOpened(ctx, cp.serverNode, burstID)
		n = v
		return err == nil && v > 0, nil
	})
	if err != nil {
		t.Fatalf("ztunnel on %s: %v", cp.serverNode, err)
	}
	mtls, err := connectionsOpened(ctx, cp.serverNode, burstID, `connection_security_policy="mutual_tls"`)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || mtls != 1 {
		t.Errorf("ztunnel on %s counts %v connections from the burst pod, %v of them mutual TLS; want exactly 1, mutual TLS", cp.serverNode, n, mtls)
	}
}

func (cp *capture) checkUnlabelled(ctx context.Context, t *testing.T) {
	client := cp.pods["client"]
	fromClient := `source_principal="` + cp.clientID + `"`
	toServer := `destination_principal="` + cp.serverID + `"`
	counted := func() (float64, float64) {
		a, err := connectionsOpened(ctx, cp.clientNode, fromClient)
		if err != nil {
			t.Fatal(err)
		}
		b, err := connectionsOpened(ctx, cp.serverNode, toServer)
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	patch := `{"metadata":{"labels":{"istio.io/dataplane-mode":null}}}`
	if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, cp.ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("removing the label of namespace %s: %v", cp.ns, err)
	}
	for _, app := range []string{"server", "client", "other"} {
		err := c.Wait(ctx, time.Minute, "pod "+app+" unenrolled", func(ctx context.Context) (bool, error) {
			p, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, app, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			_, ok := p.Annotations["ambient.istio.io/redirection"]
			return !ok, nil
		})
		if err != nil {
			t.Fatalf("%v%s", err, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
		}
	}
	fromBefore, toBefore := counted()
	capture, err := c.CaptureFabric(filepath.Join(t.TempDir(), "fabric.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	marker := "ambit-direct-" + cp.ns
	s, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, marker)
	path, stopErr := capture.Stop()
	if err != nil {
		t.Fatalf("client -> server after the label went: %v", err)
	}
	if stopErr != nil {
		t.Fatal(stopErr)
	}
	if ip, _, _ := net.SplitHostPort(s.Responses[0].SourceAddr); ip != client.Status.PodIP {
		t.Errorf("server saw %s; want the client's IP %s", s.Responses[0].SourceAddr, client.Status.PodIP)
	}
	// Plaintext, straight to the app's port.
	if !capture.Contains([]byte(marker)) {
		t.Errorf("the payload %q is not in clear on the fabric (capture %s); want direct plaintext", marker, path)
	}
	flows, err := tcpFlows(path)
	if err != nil {
		t.Fatal(err)
	}
	clientIP, serverIP := netip.MustParseAddr(client.Status.PodIP), netip.MustParseAddr(cp.pods["server"].Status.PodIP)
	if flows[flow{clientIP, serverIP, 8080}] == 0 {
		t.Errorf("no frame from %s to %s:8080 on the fabric; flows %v", clientIP, serverIP, flows)
	}
	if fromAfter, toAfter := counted(); fromAfter != fromBefore || toAfter != toBefore {
		t.Errorf("ztunnels counted new connections after the label went: from the client %v -> %v, to the server %v -> %v", fromBefore, fromAfter, toBefore, toAfter)
	}
	for _, app := range []string{"server", "client", "other"} {
		if out, err := inPodNetns(cp.pods[app], "nft", "list", "ruleset"); err != nil || strings.Contains(out, "ambit") {
			t.Errorf("pod %s keeps nftables rules after unenrolment (%v):\n%s", app, err, out)
		}
		if out, err := inPodNetns(cp.pods[app], "ip", "rule", "list"); err != nil || strings.Contains(out, "lookup 100") || strings.Contains(out, "lookup 101") {
			t.Errorf("pod %s keeps capture ip rules after unenrolment (%v):\n%s", app, err, out)
		}
	}
	cp.checkRestarts(ctx, t)
}
