package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/zds"
)

// recordingBackend is a redirect.Backend that records what it is asked.
type recordingBackend struct {
	mu     sync.Mutex // guards calls and refuse
	calls  []string
	refuse string // Enroll of the pod of this name fails
}

func (*recordingBackend) Name() string { return "recording" }

func (b *recordingBackend) Enroll(_ context.Context, p redirect.Pod) error {
	if _, err := os.Stat(p.Netns); err != nil {
		return fmt.Errorf("netns path of %s: %w", p.Name, err)
	}
	b.mu.Lock()
	refused := b.refuse == p.Name
	b.mu.Unlock()
	if refused {
		return fmt.Errorf("pod %s refused by the test", p.Name)
	}
	b.record("enroll " + p.Name)
	return nil
}

func (b *recordingBackend) Unenroll(_ context.Context, p redirect.Pod) error {
	b.record("unenroll " + p.Name)
	return nil
}

func (b *recordingBackend) record(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, s)
}

func (b *recordingBackend) has(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.calls, s)
}

// ztunnel is a ZDS handler that records the pods it holds.
type ztunnel struct {
	mu     sync.Mutex // guards pods, log and refuse
	pods   map[string]string
	log    []string
	refuse string // the add of this UID fails
}

func (z *ztunnel) AddWorkload(_ context.Context, uid string, info *zds.WorkloadInfo, h *netns.Handle) error {
	h.Close()
	z.mu.Lock()
	defer z.mu.Unlock()
	if uid == z.refuse {
		return fmt.Errorf("pod %s refused by the test", uid)
	}
	z.pods[uid] = info.Namespace + "/" + info.Name
	z.log = append(z.log, "add "+uid)
	return nil
}

func (z *ztunnel) KeepWorkload(_ context.Context, uid string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.log = append(z.log, "keep "+uid)
	return nil
}

func (z *ztunnel) DelWorkload(_ context.Context, uid string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.pods, uid)
	z.log = append(z.log, "del "+uid)
	return nil
}

func (z *ztunnel) SnapshotSent(context.Context) error { return nil }
func (z *ztunnel) Connected(context.Context) error    { return nil }

func (z *ztunnel) holds(uid string) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	_, ok := z.pods[uid]
	return ok
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, what, cond)
}

// holdNetns starts a process in a fresh netns and returns the namespace's path.
func holdNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	return testutil.NewNetNS(t, "pod").Path
}

// fakeProc makes a /proc with one process of the pod uid whose netns is nsPath.
func fakeProc(t *testing.T, proc, pid, uid, nsPath string) {
	t.Helper()
	dir := filepath.Join(proc, pid)
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/kubepods/besteffort/pod"+uid+"/c1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(nsPath, filepath.Join(dir, "ns", "net")); err != nil {
		t.Fatal(err)
	}
}

func testPod(name, uid, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", UID: types.UID(uid), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

type harness struct {
	client  *fake.Clientset
	backend *recordingBackend
	cfg     Config
	nodeNS  string
	agent   *Agent       // the running agent, set by start
	log     *slog.Logger // the agent's logger; nil discards
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.NodeName = "n1"
	cfg.ZDSSocket = filepath.Join(dir, "ztunnel", "ztunnel.sock")
	cfg.CNISocket = filepath.Join(dir, "ambit", "cni-agent.sock")
	cfg.ProcRoot = filepath.Join(dir, "proc")
	cfg.AckTimeout = 5 * time.Second
	h := &harness{backend: &recordingBackend{}, cfg: cfg, nodeNS: holdNetns(t)}
	h.cfg.NodeNetns = h.nodeNS
	h.client = fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}})
	return h
}

// start runs an agent until the test ends or stop is called.
func (h *harness) start(t *testing.T) (stop func()) {
	a, err := New(h.cfg, h.client, h.backend, h.log)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func startZtunnel(t *testing.T, path string) (*ztunnel, func()) {
	z := &ztunnel{pods: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); zds.RunClient(ctx, path, z, nil) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return z, stop
}

func (h *harness) annotation(t *testing.T, name string) string {
	p, err := h.client.CoreV1().Pods("demo").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Annotations["ambient.istio.io/redirection"]
}

func (h *harness) relabel(t *testing.T, obj string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	if obj == "namespace" {
		ns, err := h.client.CoreV1().Namespaces().Get(ctx, "demo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels = labels
		if _, err := h.client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return
	}
	p, err := h.client.CoreV1().Pods("demo").Get(ctx, obj, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = labels
	if _, err := h.client.CoreV1().Pods("demo").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) probeRules(t *testing.T) string {
	out, err := exec.Command("nsenter", "--net="+h.nodeNS, "nft", "list", "table", "ip", nodeTable).CombinedOutput()
	if err != nil {
		return "error: " + string(out)
	}
	return string(out)
}

func TestRunningPodsFollowLabels(t *testing.T) {
	h := newHarness(t)
	fakeProc(t, h.cfg.ProcRoot, "100", "uid-web", holdNetns(t))
	if _, err := h.client.CoreV1().Pods("demo").Create(context.Background(), testPod("web", "uid-web", "10.244.1.7", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.start(t)
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)

	h.relabel(t, "namespace", map[string]string{"istio.io/dataplane-mode": "ambient"})
	waitFor(t, "ztunnel to get the pod", func() bool { return z.holds("uid-web") })
	waitFor(t, "the redirection", func() bool { return h.backend.has("enroll web") })
	waitFor(t, "the annotation", func() bool { return h.annotation(t, "web") == "enabled" })
	waitFor(t, "the probe rule", func() bool { return strings.Contains(h.probeRules(t), "10.244.1.7") })
	if r := h.probeRules(t); !strings.Contains(r, "snat to 169.254.7.127") || !strings.Contains(r, "skuid 0") {
		t.Errorf("probe rule:\n%s\nwant skuid 0 ... snat to 169.254.7.127", r)
	}

	h.relabel(t, "web", map[string]string{"istio.io/dataplane-mode": "none"})
	waitFor(t, "ztunnel to drop the pod", func() bool { return !z.holds("uid-web") })
	waitFor(t, "the redirection to go", func() bool { return h.backend.has("unenroll web") })
	waitFor(t, "the annotation to go", func() bool { return h.annotation(t, "web") == "" })
	waitFor(t, "the probe rule to drop the pod", func() bool { return !strings.Contains(h.probeRules(t), "10.244.1.7") })
}

// TestProbeRuleRetried: the probe rule is written after the enrolment, and a rewrite that fails
// (here: the node netns cannot be opened yet) is retried until it lands.
func TestProbeRuleRetried(t *testing.T) {
	h := newHarness(t)
	link := filepath.Join(t.TempDir(), "node-netns")
	h.cfg.NodeNetns = link // dangling until the first rewrite has failed
	fakeProc(t, h.cfg.ProcRoot, "100", "uid-web", holdNetns(t))
	if _, err := h.client.CoreV1().Pods("demo").Create(context.Background(), testPod("web", "uid-web", "10.244.1.7", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h.log = slog.New(slog.NewTextHandler(&logs, nil))
	h.start(t)
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	h.relabel(t, "namespace", map[string]string{"istio.io/dataplane-mode": "ambient"})
	waitFor(t, "ztunnel to get the pod", func() bool { return z.holds("uid-web") })
	waitFor(t, "a failed probe rule rewrite", func() bool { return strings.Contains(logs.String(), "updating the node's probe SNAT rule; retrying") })
	if err := os.Symlink(h.nodeNS, link); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the retried probe rule", func() bool { return strings.Contains(h.probeRules(t), "10.244.1.7") })
}

func TestCNIAdd(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for _, p := range []*corev1.Pod{
		testPod("new", "uid-new", "", map[string]string{"istio.io/dataplane-mode": "ambient"}),
		testPod("plain", "uid-plain", "", nil),
		testPod("late", "uid-late", "", map[string]string{"istio.io/dataplane-mode": "ambient"}),
	} {
		p.Status = corev1.PodStatus{Phase: corev1.PodPending}
		if _, err := h.client.CoreV1().Pods("demo").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.start(t)
	c := agentapi.NewClient(h.cfg.CNISocket, 10*time.Second)
	waitFor(t, "the CNI socket", func() bool { _, err := os.Stat(h.cfg.CNISocket); return err == nil })
	netnsOf := map[string]string{}
	req := func(name string) agentapi.PodRequest {
		if netnsOf[name] == "" {
			netnsOf[name] = holdNetns(t)
		}
		return agentapi.PodRequest{ContainerID: "c-" + name, Netns: netnsOf[name], IfName: "eth0", PodNamespace: "demo",
			PodName: name, PodUID: "uid-" + name, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}}
	}

	// No ztunnel yet: an ambient pod's sandbox must wait, a plain one is let through.
	if _, err := c.Call(ctx, agentapi.OpAdd, req("late")); err == nil || !strings.Contains(err.Error(), "ztunnel not connected on node n1") {
		t.Errorf("ADD without ztunnel = %v; want \"ztunnel not connected on node n1\"", err)
	}
	if r, err := c.Call(ctx, agentapi.OpAdd, req("plain")); err != nil || r.Enrolled {
		t.Errorf("ADD of a plain pod = %+v, %v; want not enrolled", r, err)
	}

	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "ztunnel to connect", h.agent.ZDS().Connected)
	r, err := c.Call(ctx, agentapi.OpAdd, req("new"))
	if err != nil || !r.Enrolled {
		t.Fatalf("ADD = %+v, %v; want enrolled", r, err)
	}
	if !z.holds("uid-new") || !h.backend.has("enroll new") {
		t.Errorf("after ADD returned: ztunnel holds it = %v, redirection installed = %v; want both", z.holds("uid-new"), h.backend.has("enroll new"))
	}
	if got := readMigrateReq(t, netnsOf["new"]); got != "1" {
		t.Errorf("after ADD returned: tcp_migrate_req in the pod netns = %s, want 1 (queued connections move to a rolling update's new ztunnel)", got)
	}
	// The annotation follows the reply.
	waitFor(t, "the annotation", func() bool { return h.annotation(t, "new") == "enabled" })
	if got := h.annotation(t, "plain"); got != "" {
		t.Errorf("annotation of the plain pod = %q, want none", got)
	}
	if _, err := c.Call(ctx, agentapi.OpCheck, req("new")); err != nil {
		t.Errorf("CHECK of an enrolled pod: %v", err)
	}
	if _, err := c.Call(ctx, agentapi.OpDel, req("new")); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if z.holds("uid-new") || !h.backend.has("unenroll new") {
		t.Errorf("after DEL: ztunnel holds it = %v, redirection removed = %v", z.holds("uid-new"), h.backend.has("unenroll new"))
	}
	if got := readMigrateReq(t, netnsOf["new"]); got != "0" {
		t.Errorf("after DEL: tcp_migrate_req in the pod netns = %s, want the kernel's default 0", got)
	}
	if _, err := c.Call(ctx, agentapi.OpDel, agentapi.PodRequest{PodNamespace: "demo", PodName: "unknown"}); err != nil {
		t.Errorf("DEL of an unknown pod: %v", err)
	}
}

// TestCNIAddFailureUndoesBoth: in ADD the hand-over to ztunnel and the redirection run at
// once; when either fails, ADD fails naming it and neither is left in place.
func TestCNIAddFailureUndoesBoth(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for _, name := range []string{"noredirect", "noztunnel"} {
		p := testPod(name, "uid-"+name, "", map[string]string{"istio.io/dataplane-mode": "ambient"})
		p.Status = corev1.PodStatus{Phase: corev1.PodPending}
		if _, err := h.client.CoreV1().Pods("demo").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.start(t)
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "ztunnel to connect", h.agent.ZDS().Connected)
	c := agentapi.NewClient(h.cfg.CNISocket, 10*time.Second)
	h.backend.mu.Lock()
	h.backend.refuse = "noredirect"
	h.backend.mu.Unlock()
	z.mu.Lock()
	z.refuse = "uid-noztunnel"
	z.mu.Unlock()
	for name, want := range map[string]string{
		"noredirect": "installing recording redirection for pod demo/noredirect",
		"noztunnel":  "handing pod demo/noztunnel to ztunnel",
	} {
		req := agentapi.PodRequest{ContainerID: "c-" + name, Netns: holdNetns(t), IfName: "eth0", PodNamespace: "demo",
			PodName: name, PodUID: "uid-" + name, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}}
		if _, err := c.Call(ctx, agentapi.OpAdd, req); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ADD of %s = %v; want an error saying %q", name, err, want)
		}
		if z.holds("uid-"+name) || !h.backend.has("unenroll "+name) {
			t.Errorf("after the failed ADD of %s: ztunnel holds it = %v, redirection removed = %v; want neither left", name, z.holds("uid-"+name), h.backend.has("unenroll "+name))
		}
		if h.agent.isMember("demo/" + name) {
			t.Errorf("after the failed ADD of %s: still a member", name)
		}
	}
}

// TestCNIAddAnnotationRetried: the annotation, patched after ADD has replied, is retried
// until the API server takes it.
func TestCNIAddAnnotationRetried(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	p := testPod("new", "uid-new", "", map[string]string{"istio.io/dataplane-mode": "ambient"})
	p.Status = corev1.PodStatus{Phase: corev1.PodPending}
	if _, err := h.client.CoreV1().Pods("demo").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var patches atomic.Int32
	h.client.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if patches.Add(1) <= 2 {
			return true, nil, apierrors.NewServiceUnavailable("the API server is busy")
		}
		return false, nil, nil
	})
	h.start(t)
	startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "ztunnel to connect", h.agent.ZDS().Connected)
	c := agentapi.NewClient(h.cfg.CNISocket, 10*time.Second)
	r, err := c.Call(ctx, agentapi.OpAdd, agentapi.PodRequest{ContainerID: "c-new", Netns: holdNetns(t), IfName: "eth0",
		PodNamespace: "demo", PodName: "new", PodUID: "uid-new", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}})
	if err != nil || !r.Enrolled {
		t.Fatalf("ADD = %+v, %v; want enrolled although the API server refuses patches", r, err)
	}
	waitFor(t, "the annotation after two refused patches", func() bool { return h.annotation(t, "new") == "enabled" })
	if n := patches.Load(); n < 3 {
		t.Errorf("%d patches; want the two refused ones and a third that landed", n)
	}
}

func TestRestartRecoversWithoutFlushing(t *testing.T) {
	h := newHarness(t)
	fakeProc(t, h.cfg.ProcRoot, "100", "uid-web", holdNetns(t))
	p := testPod("web", "uid-web", "10.244.1.7", map[string]string{"istio.io/dataplane-mode": "ambient"})
	p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	if _, err := h.client.CoreV1().Pods("demo").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.start(t)
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "the replay to carry the recovered pod", func() bool { return z.holds("uid-web") })
	if !h.backend.has("enroll web") || h.backend.has("unenroll web") {
		t.Errorf("backend calls = %q; want the rules reconciled by Enroll, never removed", h.backend.calls)
	}
	if got := h.annotation(t, "web"); got != "enabled" {
		t.Errorf("annotation = %q, want enabled", got)
	}
}
