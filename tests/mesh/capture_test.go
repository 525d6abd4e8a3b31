package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// strictMTLS refuses plaintext in the whole namespace.
const strictMTLS = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
`

// allowClient lets only the client's identity reach the server.
const allowClient = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
`

// denyPort9001 refuses the client on the server's TCP port 9001 only, so that a connection
// to 9000 serves as the control that must stay open.
const denyPort9001 = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-9001}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/%s/sa/client]}
    to:
    - operation: {ports: ["9001"]}
`

// probeAddr is where the node agent SNATs kubelet probes to (DESIGN.md section 5).
const probeAddr = "169.254.7.127"

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
	t.Run("a ztunnel restart gets the full replay", func(t *testing.T) { cp.checkZtunnelRestart(ctx, t) })
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
	zt, err := ztunnelPod(ctx, cp.clientNode)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"optout", "hostnet"} {
		if uid := string(cp.pods[app].UID); strings.Contains(logs, uid) {
			t.Errorf("ztunnel %s's log names pod %s (uid %s); it must never have been handed to ztunnel", zt.Name, app, uid)
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

func (cp *capture) checkStrict(ctx context.Context, t *testing.T) {
	if err := c.Apply(ctx, cp.ns, strictMTLS); err != nil {
		t.Fatal(err)
	}
	var last error
	err := c.Wait(ctx, 30*time.Second, "plaintext from optout refused", func(ctx context.Context) (bool, error) {
		_, last = runClientIn(ctx, cp.ns, "optout", cp.serverURL, 1, "")
		return last != nil, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("optout refused: %v", last)
	if _, err := runClientIn(ctx, cp.ns, "hostnet", cp.serverURL, 1, ""); err == nil {
		t.Errorf("the host-network pod reached the server in plaintext under STRICT")
	}
	if _, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, ""); err != nil {
		t.Errorf("mesh client under STRICT: %v", err)
	}
	if _, err := runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, ""); err != nil {
		t.Errorf("mesh pod other under STRICT: %v", err)
	}
}

func (cp *capture) checkAllow(ctx context.Context, t *testing.T) {
	policy := fmt.Sprintf(allowClient, cp.ns)
	if err := c.Apply(ctx, cp.ns, policy); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(ctx, cp.ns, policy); err != nil {
			t.Error(err)
		}
		// Later steps need other let in again.
		err := c.Wait(ctx, 30*time.Second, "other allowed again", func(ctx context.Context) (bool, error) {
			_, err := runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, "")
			return err == nil, nil
		})
		if err != nil {
			t.Error(err)
		}
	}()
	var last error
	err := c.Wait(ctx, 30*time.Second, "other refused by the ALLOW policy", func(ctx context.Context) (bool, error) {
		_, last = runClientIn(ctx, cp.ns, "other", cp.serverURL, 1, "")
		return last != nil, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("other refused: %v", last)
	if _, err := runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, ""); err != nil {
		t.Errorf("the principal the ALLOW policy names: %v", err)
	}
	zt, err := ztunnelPod(ctx, cp.serverNode)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	if other := "src.identity=spiffe://cluster.local/ns/" + cp.ns + "/sa/other"; !logLine(logs, "connection complete", other, "policy=deny") {
		t.Errorf("ztunnel %s's access log has no denied connection with %s", zt.Name, other)
	}
}

// logLine says whether a line of logs contains every one of want.
func logLine(logs string, want ...string) bool {
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}

func (cp *capture) checkDenyOpen(ctx context.Context, t *testing.T) {
	h, err := podNetNS(cp.pods["client"])
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	serverIP := cp.pods["server"].Status.PodIP
	denied, err := dialEcho(ctx, h, net.JoinHostPort(serverIP, "9001"))
	if err != nil {
		t.Fatal(err)
	}
	defer denied.Close()
	control, err := dialEcho(ctx, h, net.JoinHostPort(serverIP, "9000"))
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	for _, e := range []*echoConn{denied, control} {
		if ip, _, _ := net.SplitHostPort(e.SourceAddr); e.Pod != "server" || ip != cp.pods["client"].Status.PodIP {
			t.Fatalf("connection from the client's netns answered by %q seeing %s; want server seeing %s", e.Pod, e.SourceAddr, cp.pods["client"].Status.PodIP)
		}
		if err := e.roundTrip("before"); err != nil {
			t.Fatal(err)
		}
	}
	policy := fmt.Sprintf(denyPort9001, cp.ns)
	if err := c.Apply(ctx, cp.ns, policy); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(ctx, cp.ns, policy); err != nil {
			t.Error(err)
		}
	}()
	var ended error
	err = c.Wait(ctx, 30*time.Second, "the open connection to 9001 ended by the DENY policy", func(ctx context.Context) (bool, error) {
		err := denied.roundTrip("ping")
		if err == nil {
			return false, nil
		}
		if isTimeout(err) {
			return false, fmt.Errorf("the denied connection hung instead of ending: %w", err)
		}
		ended = err
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	t.Logf("the open connection to 9001 ended: %v", ended)
	if err := control.roundTrip("after"); err != nil {
		t.Errorf("the control connection to 9000 (not denied) did not survive the policy: %v", err)
	}
	if err := echoOnce(ctx, h, net.JoinHostPort(serverIP, "9001")); err == nil {
		t.Errorf("a new connection to 9001 got through the DENY policy")
	}
	if err := echoOnce(ctx, h, net.JoinHostPort(serverIP, "9000")); err != nil {
		t.Errorf("a new connection to 9000 (not denied): %v", err)
	}
	zt, err := ztunnelPod(ctx, cp.serverNode)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	if !logLine(logs, "closing a connection a policy change denies", cp.pods["client"].Status.PodIP, "port=9001") {
		t.Errorf("ztunnel %s's log does not say it closed the client's connection to 9001", zt.Name)
	}
}

// captureState is what the backend installed in a pod's netns: nftables rules and ip rules.
func (cp *capture) captureState(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	nft, err := inPodNetns(pod, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := inPodNetns(pod, "ip", "rule", "list")
	if err != nil {
		t.Fatal(err)
	}
	state := nft + rules
	want := map[string]string{"nftables": "table ip ambit", "ebpf": "lookup 101"}[cp.backend]
	if !strings.Contains(state, want) {
		t.Fatalf("pod %s's netns lacks the %s backend's %q:\n%s", pod.Name, cp.backend, want, state)
	}
	return state
}

// agentLoop keeps one connection echoing and opens new ones from the client's netns until
// its context ends, and counts the round trips that worked.
type agentLoop struct {
	// mu guards the fields below.
	mu    sync.Mutex
	ok    int
	err   error
	errAt int // ok when err happened
}

func (l *agentLoop) run(ctx context.Context, open *echoConn, fresh func() error) {
	for ctx.Err() == nil {
		err := open.roundTrip("steady")
		if err == nil {
			err = fresh()
		}
		l.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				l.err, l.errAt = err, l.ok
			}
			l.mu.Unlock()
			return
		}
		l.ok++
		l.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (l *agentLoop) count() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.err
}

func (cp *capture) checkAgentRestart(ctx context.Context, t *testing.T) {
	client := cp.pods["client"]
	h, err := podNetNS(client)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addr := net.JoinHostPort(cp.pods["server"].Status.PodIP, "9000")
	open, err := dialEcho(ctx, h, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	rulesBefore := cp.captureState(t, client)

	loopCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	loop := &agentLoop{}
	wg.Go(func() { loop.run(loopCtx, open, func() error { return echoOnce(loopCtx, h, addr) }) })
	defer func() { stop(); wg.Wait() }()

	old, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=istio-cni-node"})
	if err != nil {
		t.Fatal(err)
	}
	oldUIDs := map[types.UID]bool{}
	for _, p := range old.Items {
		oldUIDs[p.UID] = true
	}
	before, _ := loop.count()
	for _, p := range old.Items {
		if err := c.Client.CoreV1().Pods(Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting agent %s: %v", p.Name, err)
		}
	}
	err = c.Wait(ctx, 2*time.Minute, "new cni agents Ready on every node", func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=istio-cni-node"})
		if err != nil || len(list.Items) != len(c.Nodes) {
			return false, nil
		}
		for _, p := range list.Items {
			if oldUIDs[p.UID] || readySince(&p).Time.IsZero() {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	during, loopErr := loop.count()
	// Some more rounds with the new agents in charge.
	err = c.Wait(ctx, 30*time.Second, "traffic after the agent restart", func(ctx context.Context) (bool, error) {
		n, err := loop.count()
		return n >= during+5 || err != nil, nil
	})
	stop()
	wg.Wait()
	after, loopErr := loop.count()
	if loopErr != nil {
		t.Fatalf("captured traffic broke during the agent restart after %d good rounds (%d before the agents were deleted, %d when the new ones were Ready): %v%s",
			loop.errAt, before, during, loopErr, Diagnose(ctx, c, "k8s-app=istio-cni-node"))
	}
	if err != nil {
		t.Fatal(err)
	}
	if during == before {
		t.Errorf("no round trip completed while the agents were restarting; the check saw nothing")
	}
	t.Logf("%d round trips (the open connection and a new one each) while the agents restarted, %d in all, none failed", during-before, after)
	if err := open.roundTrip("still"); err != nil {
		t.Errorf("the connection opened before the agent restart: %v", err)
	}
	if rulesAfter := cp.captureState(t, client); rulesAfter != rulesBefore {
		t.Errorf("the client's capture changed across the agent restart:\nbefore:\n%s\nafter:\n%s", rulesBefore, rulesAfter)
	}
	agent, err := meshPod(ctx, "k8s-app=istio-cni-node", cp.clientNode)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Logs(ctx, Namespace, agent.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "recovered enrolled pods from a previous agent") || !strings.Contains(logs, "backend="+cp.backend) {
		t.Errorf("the new agent on %s does not say it recovered the enrolled pods with the %s backend:\n%s", cp.clientNode, cp.backend, logs)
	}
	// Each ztunnel kept serving its node's enrolled pods through the agents' replay: an open
	// connection rides a pooled tunnel, so only the ztunnels' own word shows a pod dropped.
	for node, apps := range map[string][]string{cp.clientNode: {"client", "other"}, cp.serverNode: {"server"}} {
		zt, err := ztunnelPod(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		ztLogs, err := c.Logs(ctx, Namespace, zt.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, app := range apps {
			if uid := string(cp.pods[app].UID); logLine(ztLogs, "pod removed", uid) || logLine(ztLogs, "no longer served", uid) {
				t.Errorf("ztunnel %s on %s dropped pod %s during the agent restart", zt.Name, node, app)
			}
		}
		agent, err := meshPod(ctx, "k8s-app=istio-cni-node", node)
		if err != nil {
			t.Fatal(err)
		}
		agentLogs, err := c.Logs(ctx, Namespace, agent.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		if logLine(agentLogs, "ztunnel refused a replayed pod", cp.ns) {
			t.Errorf("ztunnel on %s refused pods the new agent replayed:\n%s", node, agentLogs)
		}
	}
	if p, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, "client", metav1.GetOptions{}); err != nil || p.Annotations["ambient.istio.io/redirection"] != "enabled" {
		t.Errorf("the client pod lost its redirection annotation (%v)", err)
	}
}

func (cp *capture) checkProbes(ctx context.Context, t *testing.T) {
	// Under STRICT a probe that went through ztunnel's plaintext port would be refused and
	// the server would turn NotReady: it must have stayed Ready since before it was enrolled.
	server, err := c.Client.CoreV1().Pods(cp.ns).Get(ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if since := readySince(server); since.Time.IsZero() || !since.Time.Equal(cp.serverReadySince.Time) {
		t.Errorf("server Ready since %v; want Ready without a break since %v, before enrolment", since, cp.serverReadySince)
	}
	// And no connection from the node reached ztunnel: neither from the probe address nor
	// from the node's own addresses (an unSNATed probe).
	zt, err := ztunnelPod(ctx, cp.serverNode)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	var node netip.Addr
	var gateway netip.Addr
	for _, n := range c.Nodes {
		if n.Name == cp.serverNode {
			node, _ = netip.AddrFromSlice(n.IP.To4())
			prefix, _ := netip.ParsePrefix(n.PodCIDR.String())
			gateway = prefix.Addr().Next()
		}
	}
	for _, src := range []string{probeAddr, node.String(), gateway.String()} {
		if logLine(logs, "src.addr="+src+":") || logLine(logs, "src="+src+":") {
			t.Errorf("ztunnel %s saw a connection from %s (the kubelet's probes must bypass it)", zt.Name, src)
		}
	}
	if !logLine(logs, "connection complete", "dst.addr="+server.Status.PodIP+":") {
		t.Errorf("ztunnel %s logged no connection to the server at all; the check would see nothing", zt.Name)
	}
}

// certStatus is an entry of ztunnel's certificates config dump.
type certStatus struct {
	Identity string `json:"identity"`
	Ready    bool   `json:"ready"`
}

func (cp *capture) checkZtunnelRestart(ctx context.Context, t *testing.T) {
	old, err := ztunnelPod(ctx, cp.clientNode)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client.CoreV1().Pods(Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var zt *corev1.Pod
	err = c.Wait(ctx, 2*time.Minute, "a new ztunnel Ready on "+cp.clientNode, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel", FieldSelector: "spec.nodeName=" + cp.clientNode})
		if err != nil || len(list.Items) != 1 || list.Items[0].UID == old.UID || readySince(&list.Items[0]).Time.IsZero() {
			return false, nil
		}
		zt = &list.Items[0]
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	// The agent replayed every enrolled pod of the node to the new ztunnel, and nothing else.
	logs, err := c.Logs(ctx, Namespace, zt.Name, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"client", "other"} {
		if !logLine(logs, "pod added", string(cp.pods[app].UID)) {
			t.Errorf("the new ztunnel %s was not given pod %s:\n%s", zt.Name, app, logs)
		}
	}
	for _, app := range []string{"optout", "hostnet"} {
		if logLine(logs, "pod added", string(cp.pods[app].UID)) {
			t.Errorf("the new ztunnel %s was given pod %s, which is not in the mesh", zt.Name, app)
		}
	}
	// Its config dump has the replayed pods' certificates.
	want := []string{cp.clientID, "spiffe://cluster.local/ns/" + cp.ns + "/sa/other"}
	var certs []certStatus
	err = c.Wait(ctx, 30*time.Second, "the replayed pods' certificates in the config dump", func(ctx context.Context) (bool, error) {
		b, err := ztunnelAdmin(ctx, zt, "/config_dump?section=certificates")
		if err != nil || json.Unmarshal(b, &certs) != nil {
			return false, nil
		}
		for _, id := range want {
			if !slices.ContainsFunc(certs, func(s certStatus) bool { return s.Identity == id && s.Ready }) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("%v: got %+v; want %v ready", err, certs, want)
	}
	// And the pods are served again, through the new ztunnel.
	var last error
	err = c.Wait(ctx, 30*time.Second, "client -> server through the new ztunnel", func(ctx context.Context) (bool, error) {
		_, last = runClientIn(ctx, cp.ns, "client", cp.serverURL, 3, "")
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%v: %v%s", err, last, Diagnose(ctx, c, "app=ztunnel"))
	}
	if _, err := waitMetric(ctx, cp.clientNode, "istio_tcp_connections_opened_total", cp.clientID, cp.serverID, `connection_security_policy="mutual_tls"`); err != nil {
		t.Errorf("the new ztunnel on %s: %v", cp.clientNode, err)
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
