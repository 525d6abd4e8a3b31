package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// probeAddr is where the node agent SNATs kubelet probes to (DESIGN.md section 5).
const probeAddr = "169.254.7.127"

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

// trafficLoop keeps one connection echoing (unless it is nil) and opens new ones from the
// client's netns until it is stopped or fails, and counts the round trips that worked.
type trafficLoop struct {
	stop    context.CancelFunc
	wg      sync.WaitGroup
	cleanup func() // after it has stopped, if set

	// mu guards the fields below.
	mu    sync.Mutex
	ok    int
	err   error
	errAt int // ok when err happened
}

// startLoop starts a trafficLoop: open's round trip (if any), then a new connection from h
// to addr, every 50 ms.
func startLoop(ctx context.Context, h *netns.Handle, addr string, open *echoConn) *trafficLoop {
	ctx, stop := context.WithCancel(ctx)
	l := &trafficLoop{stop: stop}
	l.wg.Go(func() { l.run(ctx, open, func() error { return echoOnce(ctx, h, addr) }) })
	return l
}

// clientLoop is a trafficLoop of new connections from the client pod to the server's TCP echo
// port, with no connection kept open.
func (cp *capture) clientLoop(ctx context.Context, t *testing.T) *trafficLoop {
	h, err := podNetNS(cp.pods["client"])
	if err != nil {
		t.Fatal(err)
	}
	l := startLoop(ctx, h, net.JoinHostPort(cp.pods["server"].Status.PodIP, "9000"), nil)
	l.cleanup = func() { h.Close() }
	return l
}

// halt stops the loop and waits for it; it may be called again.
func (l *trafficLoop) halt() {
	l.stop()
	l.wg.Wait()
	if l.cleanup != nil {
		l.cleanup()
		l.cleanup = nil
	}
}

// moreRounds waits (30 s at most) until the loop has made n more rounds or failed, then
// halts it.
func (l *trafficLoop) moreRounds(ctx context.Context, n int, what string) error {
	from, _ := l.count()
	err := c.Wait(ctx, 30*time.Second, what, func(context.Context) (bool, error) {
		ok, err := l.count()
		return ok >= from+n || err != nil, nil
	})
	l.halt()
	return err
}

func (l *trafficLoop) run(ctx context.Context, open *echoConn, fresh func() error) {
	for ctx.Err() == nil {
		var err error
		if open != nil {
			err = open.roundTrip("steady")
		}
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

func (l *trafficLoop) count() (int, error) {
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

	loop := startLoop(ctx, h, addr, open)
	defer loop.halt()

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
	during, _ := loop.count()
	// Some more rounds with the new agents in charge.
	err = loop.moreRounds(ctx, 5, "traffic after the agent restart")
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
		ztName, ztLogs := ztunnelLogs(ctx, t, node)
		for _, app := range apps {
			if uid := string(cp.pods[app].UID); logLine(ztLogs, "pod removed", uid) || logLine(ztLogs, "no longer served", uid) {
				t.Errorf("ztunnel %s on %s dropped pod %s during the agent restart", ztName, node, app)
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
	ztName, logs := ztunnelLogs(ctx, t, cp.serverNode)
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
			t.Errorf("ztunnel %s saw a connection from %s (the kubelet's probes must bypass it)", ztName, src)
		}
	}
	if !logLine(logs, "connection complete", "dst.addr="+server.Status.PodIP+":") {
		t.Errorf("ztunnel %s logged no connection to the server at all; the check would see nothing", ztName)
	}
}

// certStatus is an entry of ztunnel's certificates config dump.
type certStatus struct {
	Identity string `json:"identity"`
	Ready    bool   `json:"ready"`
}

// checkZtunnelRestart restarts the ztunnels as an upgrade does: a rolling update of the
// DaemonSet, whose maxSurge starts each node's new ztunnel while the old one still serves the
// node's pods. The new one gets them all from the agent's replay and serves them once the old
// one is gone. New connections from the client to the server, made all along, never fail:
// the old ztunnels drain while the new ones take over, on both ends.
func (cp *capture) checkZtunnelRestart(ctx context.Context, t *testing.T) {
	old, err := ztunnelPod(ctx, cp.clientNode)
	if err != nil {
		t.Fatal(err)
	}
	olds, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	loop := cp.clientLoop(ctx, t)
	defer loop.halt()

	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"ambit.test/restarted-at":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := c.Client.AppsV1().DaemonSets(Namespace).Patch(ctx, "ztunnel", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitForDaemonSet(ctx, Namespace, "ztunnel", 3*time.Minute); err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	// The rollout is done once the new ztunnels are Ready; the old ones then drain and exit.
	err = c.Wait(ctx, 2*time.Minute, "the old ztunnels gone", func(ctx context.Context) (bool, error) {
		for _, p := range olds.Items {
			if _, err := c.Client.CoreV1().Pods(Namespace).Get(ctx, p.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	err = loop.moreRounds(ctx, 5, "new connections after the rolling update")
	total, loopErr := loop.count()
	if loopErr != nil {
		t.Errorf("a new connection from the client failed during the ztunnel rolling update, after %d good ones: %v%s",
			loop.errAt, loopErr, Diagnose(ctx, c, "app=ztunnel"))
	} else if err != nil {
		t.Error(err)
	} else {
		t.Logf("%d new connections from the client during and after the rolling update, none failed", total)
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

// checkControlPlaneRestart deletes istiod-lite's pods, as a crash or a node drain does, while
// the client keeps opening connections to the server (STRICT is on, so a connection that
// lost its mTLS would fail too). The ztunnels serve from what they hold while the control
// plane is away, and take up its stream again once a new one is Ready.
func (cp *capture) checkControlPlaneRestart(ctx context.Context, t *testing.T) {
	loop := cp.clientLoop(ctx, t)
	defer loop.halt()
	streams := func() map[string]int {
		n := map[string]int{}
		for _, node := range []string{cp.clientNode, cp.serverNode} {
			_, logs := ztunnelLogs(ctx, t, node)
			n[node] = strings.Count(logs, `msg="xds stream open"`)
		}
		return n
	}
	before := streams()
	old, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil || len(old.Items) == 0 {
		t.Fatalf("istiod-lite pods: %v (%d found)", err, len(old.Items))
	}
	for _, p := range old.Items {
		if err := c.Client.CoreV1().Pods(Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting %s: %v", p.Name, err)
		}
	}
	err = c.Wait(ctx, 2*time.Minute, "a new istiod-lite Ready", func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
		if err != nil {
			return false, nil
		}
		for _, p := range list.Items {
			if !slices.ContainsFunc(old.Items, func(o corev1.Pod) bool { return o.UID == p.UID }) && !readySince(&p).Time.IsZero() {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%v%s", err, Diagnose(ctx, c, "app=istiod"))
	}
	// Each ztunnel opens a new stream to it.
	err = c.Wait(ctx, time.Minute, "both ztunnels' xDS streams open again", func(ctx context.Context) (bool, error) {
		now := streams()
		return now[cp.clientNode] > before[cp.clientNode] && now[cp.serverNode] > before[cp.serverNode], nil
	})
	if err != nil {
		t.Errorf("%v%s", err, Diagnose(ctx, c, "app=ztunnel"))
	}
	err = loop.moreRounds(ctx, 5, "new connections after the control plane restart")
	total, loopErr := loop.count()
	switch {
	case loopErr != nil:
		t.Errorf("a new connection from the client failed across the control plane restart, after %d good ones: %v%s",
			loop.errAt, loopErr, Diagnose(ctx, c, "app=ztunnel"))
	case err != nil:
		t.Error(err)
	default:
		t.Logf("%d new connections from the client across the control plane restart, none failed", total)
	}
	// And new configuration reaches the ztunnels through the new control plane.
	cp.allowOnlyClient(ctx, t)()
}
