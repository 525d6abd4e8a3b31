package model

import (
	"net/netip"
	"strings"

	"istio.io/api/annotation"
	"istio.io/api/label"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/api/workload"
)

// podAddresses returns a pod's IPs, or none for a pod that gets no Workload: not yet given an
// IP, on the host network (its address is the node's, shared with every other host-network
// pod), or finished.
func podAddresses(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil && p.Status.PodIP == "" {
		return nil
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// buildWorkload is the Workload of pod p. services maps the keys of the Services that select
// p to their ports; policies names the selector policies that apply to it; node is p's node
// (for its locality), or nil.
func (c Config) buildWorkload(p *corev1.Pod, addrs []netip.Addr, services map[string]*workload.PortList, policies []string, node *corev1.Node) *workload.Workload {
	w := &workload.Workload{
		Uid:                   c.WorkloadUID(p.Namespace, p.Name),
		Name:                  p.Name,
		Namespace:             p.Namespace,
		Network:               c.Network,
		TrustDomain:           c.TrustDomain,
		ServiceAccount:        serviceAccount(p),
		Node:                  p.Spec.NodeName,
		CanonicalName:         canonicalName(p),
		CanonicalRevision:     canonicalRevision(p),
		WorkloadType:          workloadType(p),
		WorkloadName:          workloadName(p),
		Services:              services,
		AuthorizationPolicies: policies,
		Status:                workload.WorkloadStatus_UNHEALTHY,
		ClusterId:             c.ClusterID,
	}
	for _, a := range addrs {
		w.Addresses = append(w.Addresses, a.AsSlice())
	}
	// Only a pod whose traffic the node agent redirects can terminate HBONE; the agent says so
	// with this annotation once the redirection is in place.
	if p.Annotations[annotation.AmbientRedirection.Name] == "enabled" {
		w.TunnelProtocol = workload.TunnelProtocol_HBONE
	}
	if podReady(p) {
		w.Status = workload.WorkloadStatus_HEALTHY
	}
	if node != nil {
		w.Locality = &workload.Locality{
			Region:  node.Labels[corev1.LabelTopologyRegion],
			Zone:    node.Labels[corev1.LabelTopologyZone],
			Subzone: node.Labels[label.TopologySubzone.Name],
		}
		if w.Locality.Region == "" && w.Locality.Zone == "" && w.Locality.Subzone == "" {
			w.Locality = nil
		}
	}
	return w
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName != "" {
		return p.Spec.ServiceAccountName
	}
	return "default"
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// canonicalName follows Istio: the canonical-name label, then app.kubernetes.io/name, then
// app, then the workload name.
func canonicalName(p *corev1.Pod) string {
	for _, k := range []string{label.ServiceCanonicalName.Name, "app.kubernetes.io/name", "app"} {
		if v := p.Labels[k]; v != "" {
			return v
		}
	}
	return workloadName(p)
}

// canonicalRevision follows Istio: the canonical-revision label, then app.kubernetes.io/version,
// then version, then "latest".
func canonicalRevision(p *corev1.Pod) string {
	for _, k := range []string{label.ServiceCanonicalRevision.Name, "app.kubernetes.io/version", "version"} {
		if v := p.Labels[k]; v != "" {
			return v
		}
	}
	return "latest"
}

// workloadName is the name of the pod's controller as a user knows it: a Deployment's name
// rather than its ReplicaSet's, a CronJob's rather than its Job's.
func workloadName(p *corev1.Pod) string {
	for _, ref := range p.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch ref.Kind {
		case "ReplicaSet":
			if h := p.Labels["pod-template-hash"]; h != "" {
				return strings.TrimSuffix(ref.Name, "-"+h)
			}
		case "Job":
			// A CronJob's Job is named <cronjob>-<scheduled time>.
			if i := strings.LastIndexByte(ref.Name, '-'); i > 0 && p.Labels["batch.kubernetes.io/controller-uid"] != "" && isDigits(ref.Name[i+1:]) {
				return ref.Name[:i]
			}
		}
		return ref.Name
	}
	return p.Name
}

// workloadType is the kind of the pod's controller as the workload API knows it.
func workloadType(p *corev1.Pod) workload.WorkloadType {
	for _, ref := range p.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch {
		case ref.Kind == "ReplicaSet" && p.Labels["pod-template-hash"] != "":
			return workload.WorkloadType_DEPLOYMENT
		case ref.Kind == "Job" && workloadName(p) != ref.Name:
			return workload.WorkloadType_CRONJOB
		case ref.Kind == "Job":
			return workload.WorkloadType_JOB
		}
	}
	return workload.WorkloadType_POD
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
