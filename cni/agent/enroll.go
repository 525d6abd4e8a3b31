package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"istio.io/api/annotation"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/after"
	"github.com/ambit-mesh/ambit/internal/zds"
)

// redirectionEnabled is the value of ambient.istio.io/redirection on an enrolled pod.
const redirectionEnabled = "enabled"

func (a *Agent) worker(ctx context.Context) {
	for {
		key, quit := a.queue.Get()
		if quit {
			return
		}
		if err := a.reconcile(ctx, key); err != nil {
			a.log.Warn("reconciling pod; will retry", "pod", key, "err", err)
			a.queue.AddRateLimited(key)
		} else {
			a.queue.Forget(key)
		}
		a.queue.Done(key)
	}
}

// reconcile brings one pod's enrolment in line with its labels and its namespace's.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) && a.isMember(key) {
		// A pod enrolled by its CNI ADD may not have reached the informer yet: only the API
		// server can say it is gone.
		pod, err = a.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if apierrors.IsNotFound(err) {
		return a.unenrollKey(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("reading pod: %w", err)
	}
	if podTerminated(pod) {
		return a.unenroll(ctx, string(pod.UID))
	}
	nsObj, _ := a.nss.Get(ns)
	d := wantEnrolled(pod, nsObj)
	bypass := a.wantBypass(pod, nsObj, d)
	for _, w := range d.warnings {
		a.log.Warn(w)
	}
	a.mu.Lock()
	m := a.members[string(pod.UID)]
	enrolled := m != nil
	bypassed := enrolled && m.bypassed
	a.mu.Unlock()
	switch {
	case d.enroll && !enrolled && (!podRunning(pod) || pod.DeletionTimestamp != nil):
		// No sandbox yet (its CNI ADD enrols it), or one on its way out.
	case d.enroll && !enrolled && bypass:
		// Fail-open while ztunnel is gone: the pod stays out until it returns.
	case d.enroll && bypass && !bypassed:
		if err := a.bypass(ctx, string(pod.UID)); err != nil {
			return err
		}
		a.log.Warn("ztunnel gone for longer than the fail-open grace period; the pod's traffic bypasses the mesh until it returns",
			"pod", key, "grace", a.cfg.FailOpenGrace)
		a.event(ctx, pod, corev1.EventTypeWarning, ReasonFailOpenBypassed, fmt.Sprintf(
			"ztunnel on node %s has been gone for longer than the fail-open grace period (%s): "+
				"the pod's traffic bypasses the mesh, without mTLS or policy, until ztunnel returns",
			a.cfg.NodeName, a.cfg.FailOpenGrace))
	case d.enroll && !bypass && bypassed:
		if !a.zds.Connected() {
			// Still bypassed: the resync that follows ztunnel's connect restores the capture.
			return nil
		}
		if err := a.restore(ctx, string(pod.UID)); err != nil {
			return err
		}
		a.log.Info("ztunnel is back; fail-open pod captured again", "pod", key)
		a.event(ctx, pod, corev1.EventTypeNormal, ReasonFailOpenRestored, fmt.Sprintf(
			"ztunnel on node %s is back: the pod's traffic is captured into the mesh again", a.cfg.NodeName))
	case d.enroll && !enrolled:
		if !a.zds.Connected() {
			// Capturing now would send traffic to listeners nobody opened; the resync that
			// follows ztunnel's connect enrols the pod.
			a.log.Info("pod selected for ambient, waiting for ztunnel to connect", "pod", key)
			return nil
		}
		pid, err := findPodProcess(a.cfg.ProcRoot, string(pod.UID))
		if err != nil {
			return fmt.Errorf("finding the netns of running pod %s: %w", key, err)
		}
		nsPath := filepath.Join(a.cfg.ProcRoot, strconv.Itoa(pid), "ns", "net")
		steps, err := a.enroll(ctx, pod, nsPath, podIPs(pod), false)
		if err != nil {
			return err
		}
		a.log.Info("enrolled running pod", append([]any{"pod", key}, steps.attrs()...)...)
	case !d.enroll && enrolled:
		if err := a.unenroll(ctx, string(pod.UID)); err != nil {
			return err
		}
		a.log.Info("unenrolled pod", "pod", key)
	}
	return a.annotate(ctx, pod, a.state(pod, bypass))
}

// wantBypass reports whether a pod that d selects should bypass capture now: it opted into
// fail-open and ztunnel has been gone for longer than the grace period (and has not just
// come back). It logs unreadable fail-open annotations of selected pods.
func (a *Agent) wantBypass(pod *corev1.Pod, ns *corev1.Namespace, d decision) bool {
	if !d.enroll {
		return false
	}
	on, warnings := failOpen(pod, ns)
	for _, w := range warnings {
		a.log.Warn(w)
	}
	return on && a.bypassing.Load() && !a.zds.Connected()
}

// state is what the pod's status annotations should say: captured while enrolled and not
// bypassed; bypassed while its capture is removed, or while it should bypass and is not
// enrolled.
func (a *Agent) state(pod *corev1.Pod, bypass bool) podState {
	a.mu.Lock()
	m := a.members[string(pod.UID)]
	a.mu.Unlock()
	switch {
	case m != nil && !m.bypassed:
		return stateCaptured
	case m != nil || bypass:
		return stateBypassed
	}
	return stateDirect
}

// bypass and restore are bypassLocked and restoreLocked for the pod uid, if it is a member.
func (a *Agent) bypass(ctx context.Context, uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.members[uid]; m != nil && !m.bypassed {
		return a.bypassLocked(ctx, m)
	}
	return nil
}

func (a *Agent) restore(ctx context.Context, uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.members[uid]; m != nil && m.bypassed {
		return a.restoreLocked(ctx, m)
	}
	return nil
}

func podIPs(pod *corev1.Pod) []netip.Addr {
	var ips []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			ips = append(ips, a)
		}
	}
	return ips
}

// enrollSteps is how long the parts of one enrolment took, for its log line.
type enrollSteps struct {
	wait     time.Duration // for the agent's lock
	ztunnel  time.Duration // ZDS add until ztunnel's ack (its listeners are open)
	redirect time.Duration // the backend's Enroll
}

func (s enrollSteps) attrs() []any {
	return []any{"lock_wait", millis(s.wait), "ztunnel_ack", millis(s.ztunnel), "redirect", millis(s.redirect)}
}

// millis formats d for a log line: "12.3ms".
func millis(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// enroll hands the pod to ztunnel and installs its redirection. For a running pod it does
// them in that order, so the captured traffic finds ztunnel's listeners. For a new sandbox
// (during its CNI ADD) nothing in the pod runs yet, so both happen at once and the ADD waits
// for the longer one, not for their sum. On failure it undoes both.
func (a *Agent) enroll(ctx context.Context, pod *corev1.Pod, nsPath string, ips []netip.Addr, newSandbox bool) (enrollSteps, error) {
	var steps enrollSteps
	began := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	steps.wait = time.Since(began)
	uid := string(pod.UID)
	key := pod.Namespace + "/" + pod.Name
	if old := a.members[uid]; old != nil {
		// A new sandbox for the same pod (or a repeated CNI ADD): start over.
		if err := a.unenrollLocked(ctx, uid); err != nil {
			a.log.Warn("removing the previous enrolment of a re-added pod", "pod", key, "err", err)
		}
	}
	f, err := os.Open(nsPath)
	if err != nil {
		return steps, fmt.Errorf("opening the netns of pod %s: %w", key, err)
	}
	fdPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
	zf, err := os.Open(fdPath)
	if err != nil {
		f.Close()
		return steps, fmt.Errorf("opening the netns of pod %s: %w", key, err)
	}
	rp := redirect.Pod{
		UID: uid, Namespace: pod.Namespace, Name: pod.Name, Netns: fdPath, IPs: ips,
	}
	info := &zds.WorkloadInfo{Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: serviceAccount(pod)}
	handOver := func() error {
		step := time.Now()
		err := a.zds.Add(ctx, zds.Workload{UID: uid, Info: info, Netns: zf})
		steps.ztunnel = time.Since(step)
		if err != nil {
			return fmt.Errorf("handing pod %s to ztunnel: %w", key, err)
		}
		// Here, not in the redirection: during a CNI ADD this runs next to the longer
		// capture step. Without it the pod still works; only a rolling update of ztunnel
		// resets what is queued on the old one's listeners when they close.
		if err := setListenerHandoff(fdPath, true); err != nil {
			a.log.Warn("a rolling update of ztunnel will reset this pod's connections not yet accepted when the old ztunnel stops", "pod", key, "err", err)
		}
		return nil
	}
	capture := func() error {
		step := time.Now()
		defer func() { steps.redirect = time.Since(step) }()
		if err := a.backend.Enroll(ctx, rp); err != nil {
			return fmt.Errorf("installing %s redirection for pod %s: %w", a.backend.Name(), key, err)
		}
		return nil
	}

	if newSandbox {
		handed := make(chan error, 1)
		go func() { handed <- handOver() }()
		err = capture()
		err = errors.Join(<-handed, err)
	} else if err = handOver(); err == nil {
		err = capture()
	}
	if err != nil {
		// Both undo steps are no-ops for what was not installed.
		return steps, errors.Join(err, a.backend.Unenroll(ctx, rp), a.zds.Del(ctx, uid), f.Close())
	}
	a.members[uid] = &member{key: key, pod: rp, info: info, nsFile: f}
	// During a CNI ADD after its answer; for a running pod (no CNI call) at once.
	after.Reply(ctx, a.markProbeDirty)
	return steps, nil
}

func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// unenroll removes the redirection first (traffic goes direct again), then tells ztunnel.
func (a *Agent) unenroll(ctx context.Context, uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.unenrollLocked(ctx, uid)
}

// isMember reports whether the pod namespace/name key is enrolled.
func (a *Agent) isMember(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.members {
		if m.key == key {
			return true
		}
	}
	return false
}

func (a *Agent) unenrollKey(ctx context.Context, key string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for uid, m := range a.members {
		if m.key == key {
			return a.unenrollLocked(ctx, uid)
		}
	}
	return nil
}

func (a *Agent) unenrollLocked(ctx context.Context, uid string) error {
	m := a.members[uid]
	if m == nil {
		return nil
	}
	var errs []error
	if m.pod.Netns != "" {
		if err := a.backend.Unenroll(ctx, m.pod); err != nil {
			errs = append(errs, fmt.Errorf("removing redirection of pod %s: %w", m.key, err))
		}
		// A kernel without the sysctl was warned about at enrolment.
		if err := setListenerHandoff(m.pod.Netns, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("pod %s: %w", m.key, err))
		}
	}
	if err := a.zds.Del(ctx, uid); err != nil {
		errs = append(errs, err)
	}
	if m.nsFile != nil {
		m.nsFile.Close()
	}
	delete(a.members, uid)
	a.markProbeDirty()
	return errors.Join(errs...)
}

// markProbeDirty asks syncProbes to rewrite the node's probe rule for the current members,
// which it reads when it runs; call it after changing them. A burst of changes is one
// rewrite. For a new sandbox it is called after the CNI reply (after.Reply), not inside it:
// the rewrite of one table in the node's netns takes 3 ms p50 but up to 200 ms when the node
// is busy, and kubelet probes only start once the pod's containers run.
func (a *Agent) markProbeDirty() {
	select {
	case a.probeDirty <- struct{}{}:
	default:
	}
}

// syncProbes rewrites the node's probe rule whenever markProbeDirty asks, until ctx ends; a
// failed rewrite is retried every probeRetry.
func (a *Agent) syncProbes(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.probeDirty:
		case <-retry.C:
		}
		if err := syncProbeRules(a.cfg.NodeNetns, a.probeIPs()); err != nil {
			a.log.Error("updating the node's probe SNAT rule; retrying", "err", err, "in", probeRetry)
			retry.Reset(probeRetry)
		}
	}
}

const probeRetry = time.Second

// probeIPs are the IPs of the members whose traffic is captured.
func (a *Agent) probeIPs() []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ips []netip.Addr
	for _, m := range a.members {
		if !m.bypassed {
			ips = append(ips, m.pod.IPs...)
		}
	}
	return ips
}

// podState is what the agent's status annotations say about a pod.
type podState int

const (
	stateDirect   podState = iota // not captured: neither annotation
	stateCaptured                 // ambient.istio.io/redirection=enabled
	stateBypassed                 // fail-open, ztunnel gone: ambient.ambit.dev/redirection=bypassed
)

// annotate sets or removes ambient.istio.io/redirection (enabled: the pod is captured) and
// ambient.ambit.dev/redirection (bypassed: a fail-open pod's traffic goes around the mesh)
// so that they say s.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, s podState) error {
	want := map[string]string{annotation.AmbientRedirection.Name: "", RedirectionAnnotation: ""}
	switch s {
	case stateCaptured:
		want[annotation.AmbientRedirection.Name] = redirectionEnabled
	case stateBypassed:
		want[RedirectionAnnotation] = redirectionBypassed
	}
	changes := map[string]any{}
	for k, v := range want {
		switch have, ok := pod.Annotations[k]; {
		case v == "" && ok:
			changes[k] = nil // null removes the annotation
		case v != "" && have != v:
			changes[k] = v
		}
	}
	if len(changes) == 0 {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": changes}})
	_, err := a.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("annotating pod %s/%s %s: %w", pod.Namespace, pod.Name, patch, err)
	}
	return nil
}

// recover re-establishes what a previous agent on this node enrolled (pods annotated
// ambient.istio.io/redirection=enabled): their rules are re-installed (backends are
// idempotent, so nothing is flushed) and they are recorded for ZDS replay, with their netns if
// a process of theirs is found and as KeepWorkload otherwise. It runs before ZDS is served.
func (a *Agent) recover(ctx context.Context) {
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		a.log.Error("listing pods to recover", "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pod := range pods {
		if pod.Annotations[annotation.AmbientRedirection.Name] != redirectionEnabled || !podRunning(pod) {
			continue
		}
		uid, key := string(pod.UID), pod.Namespace+"/"+pod.Name
		info := &zds.WorkloadInfo{Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: serviceAccount(pod)}
		m := &member{key: key, info: info, pod: redirect.Pod{UID: uid, Namespace: pod.Namespace, Name: pod.Name, IPs: podIPs(pod)}}
		var zf *os.File
		if pid, err := findPodProcess(a.cfg.ProcRoot, uid); err == nil {
			f, ferr := os.Open(filepath.Join(a.cfg.ProcRoot, strconv.Itoa(pid), "ns", "net"))
			if ferr == nil {
				m.nsFile = f
				m.pod.Netns = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
				zf, _ = os.Open(m.pod.Netns)
			}
		}
		if m.pod.Netns != "" {
			if err := a.backend.Enroll(ctx, m.pod); err != nil {
				a.log.Error("re-installing redirection of a recovered pod", "pod", key, "err", err)
			}
		} else {
			a.log.Warn("recovered pod's netns not found; ztunnel is asked to keep it", "pod", key)
		}
		if err := a.zds.Add(ctx, zds.Workload{UID: uid, Info: info, Netns: zf}); err != nil && !errors.Is(err, zds.ErrNotConnected) {
			a.log.Error("recording a recovered pod for ztunnel", "pod", key, "err", err)
		}
		a.members[uid] = m
	}
	a.markProbeDirty()
	if len(a.members) > 0 {
		a.log.Info("recovered enrolled pods from a previous agent", "pods", len(a.members))
	}
}
