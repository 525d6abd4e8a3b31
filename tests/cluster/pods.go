package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// stuckReasons are container waiting reasons that will not resolve by waiting: a wait ends
// at once with the kubelet's message instead of running into its timeout.
var stuckReasons = map[string]bool{
	"ErrImageNeverPull":          true,
	"ErrImagePull":               true,
	"ImagePullBackOff":           true,
	"InvalidImageName":           true,
	"CreateContainerConfigError": true,
	"CreateContainerError":       true,
	"RunContainerError":          true,
	"CrashLoopBackOff":           true,
}

// PodProblem returns why a pod cannot become ready, or "" if nothing says it cannot.
func PodProblem(p *corev1.Pod) string {
	statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, s := range statuses {
		if w := s.State.Waiting; w != nil && stuckReasons[w.Reason] {
			return fmt.Sprintf("pod %s/%s container %s: %s: %s", p.Namespace, p.Name, s.Name, w.Reason, w.Message)
		}
	}
	if p.Status.Phase == corev1.PodFailed {
		return fmt.Sprintf("pod %s/%s failed: %s: %s", p.Namespace, p.Name, p.Status.Reason, p.Status.Message)
	}
	return ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitForPods waits until at least n pods match selector in namespace and all of them are
// Ready, and returns them. It fails at once when a pod is stuck (missing image, crash loop),
// with the kubelet's reason, and on timeout describes every pod and its recent events.
func (c *Cluster) WaitForPods(ctx context.Context, namespace, selector string, n int, timeout time.Duration) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := c.Wait(ctx, timeout, fmt.Sprintf("%d ready pods %q in %s", n, selector, namespace), func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		ready := 0
		for i := range pods {
			if problem := PodProblem(&pods[i]); problem != "" {
				return false, fmt.Errorf("%s%s", problem, c.events(ctx, namespace, pods[i].Name))
			}
			if podReady(&pods[i]) && pods[i].DeletionTimestamp == nil {
				ready++
			}
		}
		return ready >= n && ready == len(pods), nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, c.describePods(ctx, namespace, pods))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods, nil
}

// WaitForDaemonSet waits until a DaemonSet has one ready, up-to-date pod on every node it
// targets, and returns its pods.
func (c *Cluster) WaitForDaemonSet(ctx context.Context, namespace, name string, timeout time.Duration) ([]corev1.Pod, error) {
	var ds *appsv1.DaemonSet
	err := c.Wait(ctx, timeout, "DaemonSet "+namespace+"/"+name, func(ctx context.Context) (bool, error) {
		var err error
		ds, err = c.Client.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		s := ds.Status
		return s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled > 0 &&
			s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled, nil
	})
	if err != nil {
		return nil, err
	}
	sel := metav1.FormatLabelSelector(ds.Spec.Selector)
	return c.WaitForPods(ctx, namespace, sel, int(ds.Status.DesiredNumberScheduled), timeout)
}

// WaitForDeployment waits until a Deployment's replicas are all ready and up to date, and
// returns its pods.
func (c *Cluster) WaitForDeployment(ctx context.Context, namespace, name string, timeout time.Duration) ([]corev1.Pod, error) {
	d, err := c.Client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("getting Deployment %s/%s: %w", namespace, name, err)
	}
	want := 1
	if d.Spec.Replicas != nil {
		want = int(*d.Spec.Replicas)
	}
	return c.WaitForPods(ctx, namespace, metav1.FormatLabelSelector(d.Spec.Selector), want, timeout)
}

// events lists the recent events of an object, for error messages.
func (c *Cluster) events(ctx context.Context, namespace, name string) string {
	list, err := c.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String(),
	})
	if err != nil || len(list.Items) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n  events:")
	for _, e := range list.Items {
		fmt.Fprintf(&b, "\n    %s %s: %s", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

// describePods summarizes pods' phases, container states and events.
func (c *Cluster) describePods(ctx context.Context, namespace string, pods []corev1.Pod) string {
	if len(pods) == 0 {
		return "\n  (no matching pods)"
	}
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "\n  pod %s on %q: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cond := range p.Status.Conditions {
			if cond.Status != corev1.ConditionTrue && cond.Message != "" {
				fmt.Fprintf(&b, "; %s: %s", cond.Type, cond.Message)
			}
		}
		for _, s := range p.Status.ContainerStatuses {
			if w := s.State.Waiting; w != nil {
				fmt.Fprintf(&b, "; %s waiting: %s %s", s.Name, w.Reason, w.Message)
			}
			if t := s.State.Terminated; t != nil {
				fmt.Fprintf(&b, "; %s terminated: %s (exit %d)", s.Name, t.Reason, t.ExitCode)
			}
		}
		b.WriteString(c.events(context.WithoutCancel(ctx), namespace, p.Name))
	}
	return b.String()
}
