package model

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/api/workload"
)

// buildService is the workload API Service of a Kubernetes Service.
func (c Config) buildService(s *corev1.Service) *workload.Service {
	out := &workload.Service{
		Name:      s.Name,
		Namespace: s.Namespace,
		Hostname:  c.ServiceHostname(s.Namespace, s.Name),
	}
	for _, ip := range serviceIPs(s) {
		out.Addresses = append(out.Addresses, &workload.NetworkAddress{Network: c.Network, Address: ip.AsSlice()})
	}
	for _, p := range s.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // the mesh carries TCP only
		}
		port := &workload.Port{ServicePort: uint32(p.Port), AppProtocol: appProtocol(p)}
		// A named target port is resolved per pod, in the Workload's services map.
		if p.TargetPort.IntValue() > 0 {
			port.TargetPort = uint32(p.TargetPort.IntValue())
		} else if p.TargetPort.String() == "" || p.TargetPort.String() == "0" {
			port.TargetPort = uint32(p.Port)
		}
		out.Ports = append(out.Ports, port)
	}
	return out
}

// serviceIPs returns a Service's ClusterIPs (none for a headless Service).
func serviceIPs(s *corev1.Service) []netip.Addr {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// appProtocol reads the port's appProtocol, or Istio's port-name convention (http-web, grpc).
func appProtocol(p corev1.ServicePort) workload.AppProtocol {
	proto := ""
	if p.AppProtocol != nil {
		proto = strings.ToLower(*p.AppProtocol)
	} else {
		proto, _, _ = strings.Cut(strings.ToLower(p.Name), "-")
	}
	switch proto {
	case "http", "http1", "kubernetes.io/h1":
		return workload.AppProtocol_HTTP11
	case "http2", "kubernetes.io/h2c":
		return workload.AppProtocol_HTTP2
	case "grpc":
		return workload.AppProtocol_GRPC
	}
	return workload.AppProtocol_UNKNOWN
}

// podPorts resolves a Service's ports against one of its pods: each TCP port with its target
// port, named target ports looked up in the pod's containers. Ports a pod does not expose by
// that name are left out for that pod.
func podPorts(s *corev1.Service, p *corev1.Pod) *workload.PortList {
	out := &workload.PortList{}
	for _, sp := range s.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		target := uint32(sp.TargetPort.IntValue())
		if name := sp.TargetPort.StrVal; name != "" && target == 0 {
			target = namedPort(p, name)
			if target == 0 {
				continue
			}
		}
		if target == 0 {
			target = uint32(sp.Port)
		}
		out.Ports = append(out.Ports, &workload.Port{ServicePort: uint32(sp.Port), TargetPort: target})
	}
	return out
}

func namedPort(p *corev1.Pod, name string) uint32 {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return uint32(cp.ContainerPort)
			}
		}
	}
	return 0
}
