package agent

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"istio.io/api/annotation"
	"istio.io/api/label"
)

// The values of istio.io/dataplane-mode that mean something here.
const (
	modeAmbient = "ambient"
	modeNone    = "none"
)

// ztunnelLabel marks ztunnel's own pods, which are never captured.
const ztunnelLabel, ztunnelValue = "app", "ztunnel"

// decision is whether a pod should be enrolled, and warnings about labels with values that
// mean nothing (for the log: they name the object and the expected values).
type decision struct {
	enroll   bool
	warnings []string
}

// wantEnrolled applies DESIGN.md section 5's selectors: pod label istio.io/dataplane-mode=ambient,
// or namespace label istio.io/dataplane-mode=ambient and pod label not none; never host-network
// pods, ztunnel itself or pods with an Istio sidecar. ns may be nil (not yet known).
func wantEnrolled(pod *corev1.Pod, ns *corev1.Namespace) decision {
	var d decision
	if pod.Spec.HostNetwork || pod.Labels[ztunnelLabel] == ztunnelValue {
		return d
	}
	if _, ok := pod.Annotations[annotation.SidecarStatus.Name]; ok {
		return d
	}
	key := label.IoIstioDataplaneMode.Name
	switch v, ok := pod.Labels[key]; {
	case !ok:
	case v == modeAmbient:
		d.enroll = true
		return d
	case v == modeNone:
		return d
	default:
		d.warnings = append(d.warnings, fmt.Sprintf("pod %s/%s: label %s has value %q; expected %s or %s (ignored)",
			pod.Namespace, pod.Name, key, v, modeAmbient, modeNone))
	}
	if ns == nil {
		return d
	}
	switch v, ok := ns.Labels[key]; {
	case !ok, v == modeNone:
	case v == modeAmbient:
		d.enroll = true
	default:
		d.warnings = append(d.warnings, fmt.Sprintf("namespace %s: label %s has value %q; expected %s or %s (ignored)",
			ns.Name, key, v, modeAmbient, modeNone))
	}
	return d
}

// podRunning reports whether the pod has a sandbox whose network can be captured.
func podRunning(pod *corev1.Pod) bool {
	return pod.Status.PodIP != "" && !podTerminated(pod)
}

// podTerminated reports whether the pod's containers are done for good.
func podTerminated(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}
