package state

import (
	"net/netip"

	"github.com/ambit-mesh/ambit/api/workload"
)

// Workload is a pod as ztunnel knows it. It is immutable: an update replaces it.
type Workload struct {
	UID       string       `json:"uid"`
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Addresses []netip.Addr `json:"addresses"`
	Network   string       `json:"network,omitempty"`
	// HBONE reports that the workload's ztunnel terminates HBONE for it (tunnel_protocol HBONE):
	// traffic to it goes through the tunnel on 15008, else in plaintext to its port.
	HBONE          bool   `json:"hbone"`
	TrustDomain    string `json:"trustDomain"`
	ServiceAccount string `json:"serviceAccount"`
	Node           string `json:"node,omitempty"`
	// Services maps the keys of the services the workload backs to their ports, resolved for
	// this workload (named target ports resolved).
	Services map[string][]Port `json:"services,omitempty"`
	// AuthorizationPolicies names the WORKLOAD_SELECTOR policies that select the workload.
	AuthorizationPolicies []string `json:"authorizationPolicies,omitempty"`
	Healthy               bool     `json:"healthy"`
	// Waypoint is the waypoint traffic to the workload goes through, if any.
	Waypoint *workload.GatewayAddress `json:"waypoint,omitempty"`
	// Proto is the resource as received, for fields not lifted here.
	Proto *workload.Workload `json:"-"`
}

// Identity returns the workload's SPIFFE id, spiffe://<td>/ns/<ns>/sa/<sa>.
func (w *Workload) Identity() string {
	return "spiffe://" + w.TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// Port is one port of a service: ServicePort on the VIP, TargetPort on the endpoint (0 in a
// Service's own list when it is a named port resolved per workload).
type Port struct {
	ServicePort uint16               `json:"servicePort"`
	TargetPort  uint16               `json:"targetPort"`
	AppProtocol workload.AppProtocol `json:"appProtocol,omitempty"`
}

// NetworkAddr is an address within a network ("" is the default network).
type NetworkAddr struct {
	Network string     `json:"network,omitempty"`
	Addr    netip.Addr `json:"addr"`
}

// Service is a Kubernetes Service as ztunnel knows it. It is immutable.
type Service struct {
	// Key is "<namespace>/<hostname>".
	Key       string        `json:"key"`
	Name      string        `json:"name"`
	Namespace string        `json:"namespace"`
	Hostname  string        `json:"hostname"`
	VIPs      []NetworkAddr `json:"vips,omitempty"`
	Ports     []Port        `json:"ports,omitempty"`
	// SubjectAltNames, when set, are the identities its endpoints may present.
	SubjectAltNames []string                 `json:"subjectAltNames,omitempty"`
	Waypoint        *workload.GatewayAddress `json:"waypoint,omitempty"`
	Proto           *workload.Service        `json:"-"`
}

// Port returns the service's port of number servicePort.
func (s *Service) Port(servicePort uint16) (Port, bool) {
	for _, p := range s.Ports {
		if p.ServicePort == servicePort {
			return p, true
		}
	}
	return Port{}, false
}

func ports(in []*workload.Port) []Port {
	if len(in) == 0 {
		return nil
	}
	out := make([]Port, 0, len(in))
	for _, p := range in {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
			continue
		}
		out = append(out, Port{ServicePort: uint16(p.GetServicePort()), TargetPort: uint16(p.GetTargetPort()), AppProtocol: p.GetAppProtocol()})
	}
	return out
}

func fromWorkload(w *workload.Workload) *Workload {
	out := &Workload{
		UID: w.GetUid(), Name: w.GetName(), Namespace: w.GetNamespace(), Network: w.GetNetwork(),
		HBONE:       w.GetTunnelProtocol() == workload.TunnelProtocol_HBONE,
		TrustDomain: w.GetTrustDomain(), ServiceAccount: w.GetServiceAccount(), Node: w.GetNode(),
		AuthorizationPolicies: w.GetAuthorizationPolicies(),
		Healthy:               w.GetStatus() == workload.WorkloadStatus_HEALTHY,
		Waypoint:              w.GetWaypoint(),
		Proto:                 w,
	}
	if out.TrustDomain == "" {
		out.TrustDomain = "cluster.local"
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	for _, b := range w.GetAddresses() {
		if a, ok := netip.AddrFromSlice(b); ok {
			out.Addresses = append(out.Addresses, a.Unmap())
		}
	}
	if len(w.GetServices()) > 0 {
		out.Services = make(map[string][]Port, len(w.GetServices()))
		for k, pl := range w.GetServices() {
			out.Services[k] = ports(pl.GetPorts())
		}
	}
	return out
}

func fromService(key string, s *workload.Service) *Service {
	out := &Service{
		Key: key, Name: s.GetName(), Namespace: s.GetNamespace(), Hostname: s.GetHostname(),
		Ports: ports(s.GetPorts()), SubjectAltNames: s.GetSubjectAltNames(), Waypoint: s.GetWaypoint(), Proto: s,
	}
	for _, a := range s.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
			out.VIPs = append(out.VIPs, NetworkAddr{Network: a.GetNetwork(), Addr: ip.Unmap()})
		}
	}
	return out
}
