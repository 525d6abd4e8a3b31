package install

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// rollout is a Deployment's or DaemonSet's progress.
type rollout struct {
	ready, want int32
	// current is false until the controller has seen the newest spec.
	current  bool
	selector *metav1.LabelSelector
}

func (r rollout) done() bool { return r.current && r.ready == r.want }

func getRollout(ctx context.Context, k *Kube, kind, ns, name string) (rollout, error) {
	switch kind {
	case "Deployment":
		d, err := k.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return rollout{}, err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		ready := min(d.Status.AvailableReplicas, d.Status.UpdatedReplicas)
		return rollout{ready: ready, want: want, current: d.Status.ObservedGeneration >= d.Generation && d.Status.Replicas == want, selector: d.Spec.Selector}, nil
	case "DaemonSet":
		d, err := k.Client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return rollout{}, err
		}
		ready := min(d.Status.NumberReady, d.Status.UpdatedNumberScheduled)
		return rollout{ready: ready, want: d.Status.DesiredNumberScheduled, current: d.Status.ObservedGeneration >= d.Generation, selector: d.Spec.Selector}, nil
	}
	return rollout{}, fmt.Errorf("waiting for %s: not a Deployment or DaemonSet", kind)
}

// progressEvery is how often a long wait says where it is.
const progressEvery = 15 * time.Second

// waitWorkload waits for the Deployment or DaemonSet w to be ready. Every progressEvery it
// prints how far it is; on timeout it fails with what the not-ready pods report.
func waitWorkload(ctx context.Context, k *Kube, w *unstructured.Unstructured, opts Options) (string, error) {
	kind, name, ns := w.GetKind(), w.GetName(), w.GetNamespace()
	var last rollout
	began, said := time.Now(), time.Now()
	err := poll(ctx, 500*time.Millisecond, func() (bool, error) {
		r, err := getRollout(ctx, k, kind, ns, name)
		if err != nil {
			return false, nil
		}
		last = r
		if time.Since(said) >= progressEvery {
			said = time.Now()
			fmt.Fprintf(opts.Out, "    … %s %s: %d/%d pods ready after %.0fs%s\n", kind, name, r.ready, r.want, time.Since(began).Seconds(), briefReason(ctx, k, ns, r.selector))
		}
		return r.done(), nil
	}, func() error {
		return fmt.Errorf("%s %s/%s not ready after %s: %d/%d pods ready%s", kind, ns, name, opts.Timeout, last.ready, last.want, podReasons(context.WithoutCancel(ctx), k, ns, last.selector))
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %d/%d ready", kind, name, last.ready, last.want), nil
}

// notReadyPods lists the pods of selector that are not Ready.
func notReadyPods(ctx context.Context, k *Kube, ns string, selector *metav1.LabelSelector) ([]corev1.Pod, error) {
	if selector == nil {
		return nil, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return nil, err
	}
	list, err := k.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if !podReady(&p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// briefReason is the first not-ready pod's reason, for progress lines.
func briefReason(ctx context.Context, k *Kube, ns string, selector *metav1.LabelSelector) string {
	pods, err := notReadyPods(ctx, k, ns, selector)
	if err != nil || len(pods) == 0 {
		return ""
	}
	if r := PodReason(&pods[0]); r != "" {
		return " (" + pods[0].Name + ": " + r + ")"
	}
	return ""
}

// podReasons describes every not-ready pod of selector: its node and why it is not ready,
// with the last lines of a crashed container's log.
func podReasons(ctx context.Context, k *Kube, ns string, selector *metav1.LabelSelector) string {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	pods, err := notReadyPods(ctx, k, ns, selector)
	if err != nil {
		return fmt.Sprintf("\n  (listing its pods: %v)", err)
	}
	if len(pods) == 0 && selector != nil {
		return "\n  no pod of it is waiting (none created yet: check the controller's events with kubectl describe)"
	}
	var b strings.Builder
	for _, p := range pods {
		node := p.Spec.NodeName
		if node == "" {
			node = "no node"
		}
		fmt.Fprintf(&b, "\n  pod %s (%s): %s", p.Name, node, PodReason(&p))
		for _, s := range p.Status.ContainerStatuses {
			if s.RestartCount > 0 {
				b.WriteString(previousLog(ctx, k, &p, s.Name))
			}
		}
	}
	return b.String()
}

// PodReason says in one line why p is not ready: a container's waiting reason and message,
// its last crash, a failed scheduling, or the failing readiness.
func PodReason(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return "not scheduled: " + c.Reason + ": " + c.Message
		}
	}
	statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, s := range statuses {
		if w := s.State.Waiting; w != nil && w.Reason != "" {
			r := fmt.Sprintf("container %s: %s", s.Name, w.Reason)
			if w.Message != "" {
				r += ": " + w.Message
			}
			if t := s.LastTerminationState.Terminated; t != nil {
				r += fmt.Sprintf(" (last exit %d: %s, %d restarts)", t.ExitCode, t.Reason, s.RestartCount)
			}
			return r
		}
		if t := s.State.Terminated; t != nil {
			return fmt.Sprintf("container %s exited %d: %s %s", s.Name, t.ExitCode, t.Reason, t.Message)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil && !s.Ready {
			return fmt.Sprintf("container %s running but not ready (readiness probe failing)", s.Name)
		}
	}
	if p.Status.Phase == corev1.PodPending {
		return "pending"
	}
	return string(p.Status.Phase)
}

func previousLog(ctx context.Context, k *Kube, p *corev1.Pod, container string) string {
	lines := int64(10)
	raw, err := k.Client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container, Previous: true, TailLines: &lines}).DoRaw(ctx)
	if err != nil || len(raw) == 0 {
		return ""
	}
	return "\n    last log lines of " + container + ":\n      " + strings.ReplaceAll(strings.TrimSpace(string(raw)), "\n", "\n      ")
}
