package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/zds"
)

// Fail-open: a pod (or namespace) annotated FailOpenAnnotation="true" opts into direct
// traffic when the node's ztunnel has been gone (no ZDS connection) for longer than
// Config.FailOpenGrace. Its redirection is removed and ztunnel's record of it dropped, as if it
// were not enrolled; when a ztunnel connects again the pod is handed to it (AddWorkload) and
// only then captured again. Everything else stays fail-closed: captured pods without the
// annotation keep their rules, and their connections fail while ztunnel is away.
const (
	// FailOpenAnnotation opts a pod, or every pod of a namespace, into fail-open; the pod's
	// value wins over its namespace's. Values: "true" or "false"; anything else is logged and
	// means fail-closed.
	FailOpenAnnotation = "ambient.ambit.dev/fail-open"
	// RedirectionAnnotation is the agent's status annotation for what Istio's
	// ambient.istio.io/redirection cannot say: "bypassed" while a fail-open pod's traffic goes
	// around the mesh. Istio's annotation is removed meanwhile, so istiod-lite tells the other
	// ztunnels to reach the pod directly.
	RedirectionAnnotation = "ambient.ambit.dev/redirection"
	redirectionBypassed   = "bypassed"
)

// The Kubernetes Events the agent records on a fail-open pod, so that `kubectl describe pod`
// and `kubectl get events` show when its traffic left the mesh and when it came back.
const (
	ReasonFailOpenBypassed = "FailOpenBypassed" // Warning: capture removed, traffic goes direct
	ReasonFailOpenRestored = "FailOpenRestored" // Normal: captured again by a returned ztunnel
	eventController        = "ambient.ambit.dev/cni-agent"
	eventComponent         = "cni-agent"
)

// DefaultFailOpenGrace is how long ztunnel may be gone before fail-open pods bypass it: longer
// than ztunnel's reconnect backoff (5 s at most), so an agent or ztunnel that merely restarts
// does not open anything.
const DefaultFailOpenGrace = 10 * time.Second

// failOpen reports whether pod opted into fail-open, and warnings (naming the object, the
// value and the expected ones) about annotations it could not read, which count as
// fail-closed. ns may be nil.
func failOpen(pod *corev1.Pod, ns *corev1.Namespace) (bool, []string) {
	if v, ok := pod.Annotations[FailOpenAnnotation]; ok {
		on, err := parseFailOpen(v)
		if err != nil {
			return false, []string{fmt.Sprintf("pod %s/%s: %v", pod.Namespace, pod.Name, err)}
		}
		return on, nil
	}
	if ns == nil {
		return false, nil
	}
	v, ok := ns.Annotations[FailOpenAnnotation]
	if !ok {
		return false, nil
	}
	on, err := parseFailOpen(v)
	if err != nil {
		return false, []string{fmt.Sprintf("namespace %s: %v", ns.Name, err)}
	}
	return on, nil
}

func parseFailOpen(v string) (bool, error) {
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("annotation %s has value %q; expected \"true\" or \"false\" (treated as fail-closed)", FailOpenAnnotation, v)
}

// outage follows the ZDS connection for fail-open. It is sampled (observe) rather than told,
// so it needs no lock; one goroutine owns it.
type outage struct {
	grace     time.Duration
	up        bool      // a ztunnel is connected
	downSince time.Time // when the last ztunnel went, or the agent started, while !up
	expired   bool      // down for longer than grace
}

// outageEvent is what one observation changed.
type outageEvent int

const (
	outageSame   outageEvent = iota
	ztunnelGone              // the connection just went: the grace period starts
	graceExpired             // gone for longer than the grace period: fail-open pods bypass
	ztunnelBack              // connected again (or for the first time): pods are resynced
)

// newOutage starts in the state of an agent that has just started: no ztunnel yet, the grace
// period running from now.
func newOutage(grace time.Duration, now time.Time) *outage {
	return &outage{grace: grace, downSince: now}
}

// observe takes whether a ztunnel is connected at now and returns what changed.
func (o *outage) observe(connected bool, now time.Time) outageEvent {
	switch {
	case connected && o.up:
		return outageSame
	case connected:
		o.up, o.expired = true, false
		return ztunnelBack
	case o.up:
		o.up, o.downSince = false, now
		return ztunnelGone
	case !o.expired && now.Sub(o.downSince) > o.grace:
		o.expired = true
		return graceExpired
	}
	return outageSame
}

// bypassLocked takes a captured fail-open pod out of the mesh while ztunnel is gone: its
// redirection goes first (its traffic flows directly from then on), then ztunnel's record of
// it, so that no replay hands it to a returning ztunnel before its capture is back. mu must be
// held.
func (a *Agent) bypassLocked(ctx context.Context, m *member) error {
	if m.pod.Netns == "" {
		// A recovered pod without a process: there is no netns to take rules out of.
		return nil
	}
	if err := a.backend.Unenroll(ctx, m.pod); err != nil {
		return fmt.Errorf("removing the %s redirection of fail-open pod %s: %w", a.backend.Name(), m.key, err)
	}
	m.bypassed = true
	a.markProbeDirty()
	if err := a.zds.Del(ctx, m.pod.UID); err != nil {
		return fmt.Errorf("dropping bypassed pod %s from ztunnel: %w", m.key, err)
	}
	return nil
}

// restoreLocked captures a bypassed pod again once a ztunnel is connected: ztunnel gets it
// first (AddWorkload, acked once its listeners are open in the pod), then its redirection comes
// back, so no captured connection finds the listeners missing. On failure the pod stays
// bypassed, with neither. mu must be held.
func (a *Agent) restoreLocked(ctx context.Context, m *member) error {
	zf, err := os.Open(m.pod.Netns)
	if err != nil {
		return fmt.Errorf("opening the netns of bypassed pod %s: %w", m.key, err)
	}
	if err := a.zds.Add(ctx, zds.Workload{UID: m.pod.UID, Info: m.info, Netns: zf}); err != nil {
		err = fmt.Errorf("handing bypassed pod %s back to ztunnel: %w", m.key, err)
		return errors.Join(err, a.zds.Del(ctx, m.pod.UID))
	}
	if err := a.backend.Enroll(ctx, m.pod); err != nil {
		err = fmt.Errorf("re-installing the %s redirection of pod %s: %w", a.backend.Name(), m.key, err)
		return errors.Join(err, a.backend.Unenroll(ctx, m.pod), a.zds.Del(ctx, m.pod.UID))
	}
	m.bypassed = false
	a.markProbeDirty()
	return nil
}

// event records a Kubernetes Event about pod. Events are best effort: what they report has
// already happened, so a failure to record one is logged and nothing else.
func (a *Agent) event(ctx context.Context, pod *corev1.Pod, typ, reason, msg string) {
	t := time.Now()
	now := metav1.NewTime(t)
	ev := &corev1.Event{
		// Named as client-go's recorder names them: the object's name and the time.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", pod.Name, t.UnixNano()), Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
		},
		Reason:              reason,
		Message:             msg,
		Type:                typ,
		Source:              corev1.EventSource{Component: eventComponent, Host: a.cfg.NodeName},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: eventController,
		ReportingInstance:   a.cfg.NodeName,
	}
	if _, err := a.client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.log.Warn("could not record an event on the pod (does the agent's ClusterRole allow creating events?)",
			"pod", pod.Namespace+"/"+pod.Name, "reason", reason, "err", err)
	}
}
