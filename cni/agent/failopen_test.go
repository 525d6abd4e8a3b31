package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/zds"
)

func TestFailOpenAnnotation(t *testing.T) {
	pod := func(v ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"}}
		if len(v) > 0 {
			p.Annotations = map[string]string{FailOpenAnnotation: v[0]}
		}
		return p
	}
	ns := func(v ...string) *corev1.Namespace {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}
		if len(v) > 0 {
			n.Annotations = map[string]string{FailOpenAnnotation: v[0]}
		}
		return n
	}
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		ns      *corev1.Namespace
		want    bool
		warning string
	}{
		{name: "default is fail-closed", pod: pod(), ns: ns()},
		{name: "namespace unknown", pod: pod()},
		{name: "pod true", pod: pod("true"), ns: ns(), want: true},
		{name: "namespace true", pod: pod(), ns: ns("true"), want: true},
		{name: "pod false overrides namespace true", pod: pod("false"), ns: ns("true")},
		{name: "pod true overrides namespace false", pod: pod("true"), ns: ns("false"), want: true},
		{name: "bad pod value is fail-closed, even in a fail-open namespace", pod: pod("yes"), ns: ns("true"),
			warning: `pod demo/web: annotation ambient.ambit.dev/fail-open has value "yes"; expected "true" or "false" (treated as fail-closed)`},
		{name: "bad namespace value is fail-closed", pod: pod(), ns: ns("True"),
			warning: `namespace demo: annotation ambient.ambit.dev/fail-open has value "True"; expected "true" or "false" (treated as fail-closed)`},
		{name: "empty value is bad", pod: pod(""), ns: ns(),
			warning: `pod demo/web: annotation ambient.ambit.dev/fail-open has value ""; expected "true" or "false" (treated as fail-closed)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings := failOpen(tc.pod, tc.ns)
			if got != tc.want {
				t.Errorf("failOpen = %v, want %v", got, tc.want)
			}
			var want []string
			if tc.warning != "" {
				want = []string{tc.warning}
			}
			if !slices.Equal(warnings, want) {
				t.Errorf("warnings = %q\nwant %q", warnings, want)
			}
		})
	}
}

func TestOutage(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	o := newOutage(10*time.Second, t0)
	for _, step := range []struct {
		at        time.Duration
		connected bool
		want      outageEvent
	}{
		// The agent starts without ztunnel; it connects within the grace period.
		{1 * time.Second, false, outageSame},
		{3 * time.Second, true, ztunnelBack},
		{4 * time.Second, true, outageSame},
		// It goes, and comes back just in time: nothing bypasses.
		{5 * time.Second, false, ztunnelGone},
		{15 * time.Second, false, outageSame}, // exactly the grace period is not longer than it
		{15*time.Second + time.Millisecond, true, ztunnelBack},
		// It goes for good: once past the grace period, and only once.
		{20 * time.Second, false, ztunnelGone},
		{29 * time.Second, false, outageSame},
		{31 * time.Second, false, graceExpired},
		{40 * time.Second, false, outageSame},
		{time.Hour, false, outageSame},
		// It returns; a later outage gets a grace period of its own.
		{time.Hour + time.Second, true, ztunnelBack},
		{time.Hour + 2*time.Second, false, ztunnelGone},
		{time.Hour + 11*time.Second, false, outageSame},
		{time.Hour + 13*time.Second, false, graceExpired},
	} {
		if got := o.observe(step.connected, at(step.at)); got != step.want {
			t.Fatalf("at %v connected=%v: event %d, want %d", step.at, step.connected, got, step.want)
		}
	}

	// An agent that starts with no ztunnel at all opens up after the grace period.
	o = newOutage(10*time.Second, t0)
	if got := o.observe(false, at(11*time.Second)); got != graceExpired {
		t.Errorf("no ztunnel for 11s after start: event %d, want graceExpired (%d)", got, graceExpired)
	}
}

func TestNewRejectsBadGrace(t *testing.T) {
	for _, g := range []time.Duration{0, -time.Second} {
		cfg := DefaultConfig()
		cfg.NodeName = "n1"
		cfg.FailOpenGrace = g
		_, err := New(cfg, nil, &recordingBackend{}, nil)
		if err == nil || !strings.Contains(err.Error(), "fail-open grace period "+g.String()+": must be positive") {
			t.Errorf("New with grace %v: %v; want an error naming the grace period", g, err)
		}
	}
}

// orderedZtunnel is a ZDS handler that writes what it is told into the backend's call log, so
// that the test sees ztunnel's messages and the redirection changes in one order.
type orderedZtunnel struct {
	name string
	b    *recordingBackend
}

func (z *orderedZtunnel) AddWorkload(_ context.Context, uid string, _ *zds.WorkloadInfo, h *netns.Handle) error {
	h.Close()
	z.b.record(z.name + " add " + uid)
	return nil
}

func (z *orderedZtunnel) KeepWorkload(_ context.Context, uid string) error {
	z.b.record(z.name + " keep " + uid)
	return nil
}

func (z *orderedZtunnel) DelWorkload(_ context.Context, uid string) error {
	z.b.record(z.name + " del " + uid)
	return nil
}

func (z *orderedZtunnel) SnapshotSent(context.Context) error {
	z.b.record(z.name + " snapshot")
	return nil
}

func (z *orderedZtunnel) Connected(context.Context) error { return nil }

func (h *harness) runOrderedZtunnel(t *testing.T, name string) (stop func()) {
	z := &orderedZtunnel{name: name, b: h.backend}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); zds.RunClient(ctx, h.cfg.ZDSSocket, z, nil) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// syncBuffer is a log destination the agent's goroutines may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (h *harness) annotations(t *testing.T, name string) map[string]string {
	p, err := h.client.CoreV1().Pods("demo").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Annotations
}

func (h *harness) calls() []string {
	h.backend.mu.Lock()
	defer h.backend.mu.Unlock()
	return slices.Clone(h.backend.calls)
}

// TestFailOpenBypassAndRestore: in a namespace annotated fail-open, ztunnel goes away; past the
// grace period the fail-open pod's redirection and ZDS record go, while the pod that says
// "false" and the one with a bad value stay captured. A new ztunnel's replay does not carry
// the bypassed pod; it is added right after SnapshotSent, and captured again only after that.
func TestFailOpenBypassAndRestore(t *testing.T) {
	h := newHarness(t)
	logs := &syncBuffer{}
	h.log = slog.New(slog.NewTextHandler(logs, nil))
	h.cfg.FailOpenGrace = time.Second
	ctx := context.Background()
	nsObj, err := h.client.CoreV1().Namespaces().Get(ctx, "demo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{"istio.io/dataplane-mode": "ambient"}
	nsObj.Annotations = map[string]string{FailOpenAnnotation: "true"}
	if _, err := h.client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := []struct{ name, failOpen string }{{"open", ""}, {"closed", "false"}, {"bad", "yes"}}
	for i, p := range pods {
		uid := "uid-" + p.name
		fakeProc(t, h.cfg.ProcRoot, strings.Repeat("1", i+3), uid, holdNetns(t))
		pod := testPod(p.name, uid, netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}).String(), nil)
		if p.failOpen != "" {
			pod.Annotations = map[string]string{FailOpenAnnotation: p.failOpen}
		}
		if _, err := h.client.CoreV1().Pods("demo").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.start(t)
	stopZ1 := h.runOrderedZtunnel(t, "z1")
	for _, p := range pods {
		waitFor(t, p.name+" captured", func() bool { return h.annotation(t, p.name) == "enabled" })
	}

	stopZ1()
	waitFor(t, "the fail-open pod to bypass capture", func() bool {
		a := h.annotations(t, "open")
		return a[RedirectionAnnotation] == "bypassed" && a["ambient.istio.io/redirection"] == ""
	})
	if !h.backend.has("unenroll open") {
		t.Errorf("calls %q: the bypassed pod's redirection was not removed", h.calls())
	}
	waitFor(t, "a Warning event on the bypassed pod", func() bool {
		return slices.Equal(h.events(t, "open"), []string{"Warning FailOpenBypassed"})
	})
	for _, name := range []string{"closed", "bad"} {
		if h.backend.has("unenroll "+name) || h.annotation(t, name) != "enabled" {
			t.Errorf("fail-closed pod %s: calls %q, annotations %v; want it captured throughout", name, h.calls(), h.annotations(t, name))
		}
		if ev := h.events(t, name); len(ev) != 0 {
			t.Errorf("fail-closed pod %s has events %q; want none", name, ev)
		}
	}
	if got := h.agent.ZDS().UIDs(); !slices.Equal(got, []string{"uid-bad", "uid-closed"}) {
		t.Errorf("pods recorded for ztunnel's replay while bypassed: %q; want only the captured ones", got)
	}
	if want := `pod demo/bad: annotation ambient.ambit.dev/fail-open has value \"yes\"; expected \"true\" or \"false\" (treated as fail-closed)`; !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %s:\n%s", want, logs.String())
	}
	waitFor(t, "the probe SNAT rule to hold the captured pods' IPs and not the bypassed one's (10.244.1.10)", func() bool {
		r := h.probeRules(t)
		return !strings.Contains(r, "10.244.1.10") && strings.Contains(r, "10.244.1.11")
	})

	before := len(h.calls())
	h.runOrderedZtunnel(t, "z2")
	waitFor(t, "the fail-open pod to be captured again", func() bool {
		a := h.annotations(t, "open")
		return a["ambient.istio.io/redirection"] == "enabled" && a[RedirectionAnnotation] == ""
	})
	waitFor(t, "a Normal event on the restored pod", func() bool {
		return slices.Equal(h.events(t, "open"), []string{"Warning FailOpenBypassed", "Normal FailOpenRestored"})
	})
	after := h.calls()[before:]
	snapshot := slices.Index(after, "z2 snapshot")
	add := slices.Index(after, "z2 add uid-open")
	enroll := slices.Index(after, "enroll open")
	if snapshot < 0 || add < snapshot || enroll < add {
		t.Errorf("after ztunnel returned: %q\nwant the replay without uid-open, then z2 add uid-open, then enroll open", after)
	}
	if !slices.Contains(after[:max(snapshot, 0)], "z2 add uid-closed") {
		t.Errorf("the replay %q does not carry the fail-closed pod", after)
	}
	waitFor(t, "the probe SNAT rule to hold the restored pod", func() bool { return strings.Contains(h.probeRules(t), "10.244.1.10") })
}

// TestFailOpenNewPodDuringOutage: while ztunnel has been gone for longer than the grace
// period, CNI ADD lets a new fail-open pod start outside the mesh and still fails a
// fail-closed one; when ztunnel returns the fail-open pod is enrolled like any running pod.
func TestFailOpenNewPodDuringOutage(t *testing.T) {
	h := newHarness(t)
	h.cfg.FailOpenGrace = 500 * time.Millisecond
	ctx := context.Background()
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	for _, name := range []string{"open", "closed"} {
		p := testPod(name, "uid-"+name, "", ambient)
		p.Status = corev1.PodStatus{Phase: corev1.PodPending}
		if name == "open" {
			p.Annotations = map[string]string{FailOpenAnnotation: "true"}
		}
		if _, err := h.client.CoreV1().Pods("demo").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.start(t)
	waitFor(t, "the grace period to expire", h.agent.bypassing.Load)
	c := agentapi.NewClient(h.cfg.CNISocket, 10*time.Second)
	podNS := holdNetns(t)
	req := func(name string) agentapi.PodRequest {
		return agentapi.PodRequest{ContainerID: "c-" + name, Netns: podNS, IfName: "eth0", PodNamespace: "demo",
			PodName: name, PodUID: "uid-" + name, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}}
	}
	if r, err := c.Call(ctx, agentapi.OpAdd, req("open")); err != nil || r.Enrolled {
		t.Errorf("ADD of a fail-open pod during the outage = %+v, %v; want it started, not enrolled", r, err)
	}
	if _, err := c.Call(ctx, agentapi.OpCheck, req("open")); err != nil {
		t.Errorf("CHECK of the bypassed pod: %v", err)
	}
	if _, err := c.Call(ctx, agentapi.OpAdd, req("closed")); err == nil || !strings.Contains(err.Error(), "ztunnel not connected on node n1") {
		t.Errorf("ADD of a fail-closed pod during the outage = %v; want \"ztunnel not connected on node n1\"", err)
	}
	if a := h.annotations(t, "open"); a[RedirectionAnnotation] != "bypassed" {
		t.Errorf("annotations of the new fail-open pod: %v; want %s=bypassed", a, RedirectionAnnotation)
	}

	// The sandbox runs.
	fakeProc(t, h.cfg.ProcRoot, "200", "uid-open", podNS)
	p, err := h.client.CoreV1().Pods("demo").Get(ctx, "open", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.9", PodIPs: []corev1.PodIP{{IP: "10.244.1.9"}}}
	if _, err := h.client.CoreV1().Pods("demo").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	z, _ := startZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "the fail-open pod enrolled once ztunnel is back", func() bool {
		a := h.annotations(t, "open")
		return z.holds("uid-open") && a["ambient.istio.io/redirection"] == "enabled" && a[RedirectionAnnotation] == ""
	})
	if !h.backend.has("enroll open") {
		t.Errorf("calls %q: want the pod's redirection installed", h.calls())
	}
}

// events lists the type and reason of the events recorded on pod name in namespace demo, in
// the order they happened.
func (h *harness) events(t *testing.T, name string) []string {
	t.Helper()
	list, err := h.client.CoreV1().Events("demo").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortStableFunc(list.Items, func(a, b corev1.Event) int { return a.FirstTimestamp.Compare(b.FirstTimestamp.Time) })
	var out []string
	for _, ev := range list.Items {
		if ev.InvolvedObject.Kind == "Pod" && ev.InvolvedObject.Name == name {
			if ev.Source.Host != h.cfg.NodeName || ev.ReportingController != eventController {
				t.Errorf("event %s on %s: source %+v, controller %q; want this node and %s", ev.Reason, name, ev.Source, ev.ReportingController, eventController)
			}
			out = append(out, ev.Type+" "+ev.Reason)
		}
	}
	return out
}
