package state

import (
	"net/netip"

	"github.com/ambit-mesh/ambit/internal/apiwire"
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
	Waypoint *apiwire.GatewayAddress `json:"waypoint,omitempty"`
	// Resource is the resource as received, for fields not lifted here.
	Resource *apiwire.Workload `json:"-"`
}

// Identity returns the workload's SPIFFE id, spiffe://<td>/ns/<ns>/sa/<sa>.
func (w *Workload) Identity() string {
	return "spiffe://" + w.TrustDomain + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// Port is one port of a service: ServicePort on the VIP, TargetPort on the endpoint (0 in a
// Service's own list when it is a named port resolved per workload).
type Port struct {
	ServicePort uint16              `json:"servicePort"`
	TargetPort  uint16              `json:"targetPort"`
	AppProtocol apiwire.AppProtocol `json:"appProtocol,omitempty"`
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
	SubjectAltNames []string                `json:"subjectAltNames,omitempty"`
	Waypoint        *apiwire.GatewayAddress `json:"waypoint,omitempty"`
	Resource        *apiwire.Service        `json:"-"`
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

func ports(in []apiwire.Port) []Port {
	if len(in) == 0 {
		return nil
	}
	out := make([]Port, 0, len(in))
	for _, p := range in {
		if p.ServicePort == 0 || p.ServicePort > 65535 || p.TargetPort > 65535 {
			continue
		}
		out = append(out, Port{ServicePort: uint16(p.ServicePort), TargetPort: uint16(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	return out
}

func fromWorkload(w *apiwire.Workload) *Workload {
	out := &Workload{
		UID: w.UID, Name: w.Name, Namespace: w.Namespace, Network: w.Network,
		HBONE:       w.TunnelProtocol == apiwire.TunnelHBONE,
		TrustDomain: w.TrustDomain, ServiceAccount: w.ServiceAccount, Node: w.Node,
		AuthorizationPolicies: w.AuthorizationPolicies,
		Healthy:               w.Status == apiwire.StatusHealthy,
		Waypoint:              w.Waypoint,
		Resource:              w,
	}
	if out.TrustDomain == "" {
		out.TrustDomain = "cluster.local"
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	for _, b := range w.Addresses {
		if a, ok := netip.AddrFromSlice(b); ok {
			out.Addresses = append(out.Addresses, a.Unmap())
		}
	}
	if len(w.Services) > 0 {
		out.Services = make(map[string][]Port, len(w.Services))
		for k, pl := range w.Services {
			out.Services[k] = ports(pl)
		}
	}
	return out
}

func fromService(key string, s *apiwire.Service) *Service {
	out := &Service{
		Key: key, Name: s.Name, Namespace: s.Namespace, Hostname: s.Hostname,
		Ports: ports(s.Ports), SubjectAltNames: s.SubjectAltNames, Waypoint: s.Waypoint, Resource: s,
	}
	for _, a := range s.Addresses {
		if ip, ok := netip.AddrFromSlice(a.Address); ok {
			out.VIPs = append(out.VIPs, NetworkAddr{Network: a.Network, Addr: ip.Unmap()})
		}
	}
	return out
}
