package apiwire

import (
	"encoding/json"
)

// Workload is the part of an istio.workload.Workload (api/workload) that ztunnel reads. Field
// numbers are in the comments; the other fields are skipped.
type Workload struct {
	UID                   string            // 20
	Name                  string            // 1
	Namespace             string            // 2
	Addresses             [][]byte          // 3, raw IPv4 or IPv6 bytes
	Network               string            // 4
	TunnelProtocol        TunnelProtocol    // 5
	TrustDomain           string            // 6
	ServiceAccount        string            // 7
	Waypoint              *GatewayAddress   // 8
	Node                  string            // 9
	CanonicalName         string            // 10
	CanonicalRevision     string            // 11
	WorkloadType          WorkloadType      // 12
	WorkloadName          string            // 13
	Services              map[string][]Port // 22, PortList values
	AuthorizationPolicies []string          // 16
	Status                WorkloadStatus    // 17
	ClusterID             string            // 18
}

// Service is the part of an istio.workload.Service that ztunnel reads.
type Service struct {
	Name            string           // 1
	Namespace       string           // 2
	Hostname        string           // 3
	Addresses       []NetworkAddress // 4
	Ports           []Port           // 5
	SubjectAltNames []string         // 6
	Waypoint        *GatewayAddress  // 7
}

// Port is an istio.workload.Port.
type Port struct {
	ServicePort uint32      // 1
	TargetPort  uint32      // 2
	AppProtocol AppProtocol // 3
}

// NetworkAddress is an istio.workload.NetworkAddress.
type NetworkAddress struct {
	Network string  // 1
	Address []byte  // 2
	Length  *uint32 // 3, proto3 optional: nil when absent
}

// NamespacedHostname is an istio.workload.NamespacedHostname.
type NamespacedHostname struct {
	Namespace string // 1
	Hostname  string // 2
}

// GatewayAddress is an istio.workload.GatewayAddress. At most one of Hostname and Address (the
// oneof destination) is set.
type GatewayAddress struct {
	Hostname      *NamespacedHostname // 1
	Address       *NetworkAddress     // 2
	HBONEMTLSPort uint32              // 3
}

// MarshalJSON writes g as encoding/json wrote api/workload's generated GatewayAddress, which
// ztunnel's config dump served before this package: the oneof under "Destination", the
// field names of the generated struct tags, bytes in base64.
func (g *GatewayAddress) MarshalJSON() ([]byte, error) {
	type hostname struct {
		Namespace string `json:"namespace,omitempty"`
		Hostname  string `json:"hostname,omitempty"`
	}
	type address struct {
		Network string  `json:"network,omitempty"`
		Address []byte  `json:"address,omitempty"`
		Length  *uint32 `json:"length,omitempty"`
	}
	var out struct {
		Destination any    `json:"Destination"`
		Port        uint32 `json:"hbone_mtls_port,omitempty"`
	}
	switch {
	case g.Hostname != nil:
		out.Destination = struct {
			Hostname hostname `json:"Hostname"`
		}{hostname(*g.Hostname)}
	case g.Address != nil:
		out.Destination = struct {
			Address address `json:"Address"`
		}{address(*g.Address)}
	}
	out.Port = g.HBONEMTLSPort
	return json.Marshal(out)
}

// TunnelProtocol is istio.workload.TunnelProtocol.
type TunnelProtocol int32

// The TunnelProtocol values.
const (
	TunnelNone            TunnelProtocol = 0
	TunnelHBONE           TunnelProtocol = 1
	TunnelLegacyIstioMTLS TunnelProtocol = 2
)

var tunnelNames = []string{"NONE", "HBONE", "LEGACY_ISTIO_MTLS"}

// String returns the value's name in the .proto, or its number when it has none.
func (t TunnelProtocol) String() string { return enumName(tunnelNames, int32(t)) }

// WorkloadStatus is istio.workload.WorkloadStatus.
type WorkloadStatus int32

// The WorkloadStatus values.
const (
	StatusHealthy   WorkloadStatus = 0
	StatusUnhealthy WorkloadStatus = 1
)

var statusNames = []string{"HEALTHY", "UNHEALTHY"}

// String returns the value's name in the .proto, or its number when it has none.
func (s WorkloadStatus) String() string { return enumName(statusNames, int32(s)) }

// WorkloadType is istio.workload.WorkloadType.
type WorkloadType int32

// The WorkloadType values.
const (
	TypeDeployment WorkloadType = 0
	TypeCronJob    WorkloadType = 1
	TypePod        WorkloadType = 2
	TypeJob        WorkloadType = 3
)

var typeNames = []string{"DEPLOYMENT", "CRONJOB", "POD", "JOB"}

// String returns the value's name in the .proto, or its number when it has none.
func (t WorkloadType) String() string { return enumName(typeNames, int32(t)) }

// AppProtocol is istio.workload.AppProtocol. Its JSON form is its number.
type AppProtocol int32

// The AppProtocol values.
const (
	AppUnknown AppProtocol = 0
	AppHTTP11  AppProtocol = 1
	AppHTTP2   AppProtocol = 2
	AppGRPC    AppProtocol = 3
	AppTCP     AppProtocol = 4
	AppTLS     AppProtocol = 5
)

var appNames = []string{"UNKNOWN", "HTTP11", "HTTP2", "GRPC", "TCP", "TLS"}

// String returns the value's name in the .proto, or its number when it has none.
func (p AppProtocol) String() string { return enumName(appNames, int32(p)) }

// DecodeAddress decodes an istio.workload.Address, the body of an xDS Address resource: either
// w or s is set, or neither when the oneof is empty (the caller decides what that means).
// Errors wrap ErrMalformed.
func DecodeAddress(b []byte) (w *Workload, s *Service, err error) {
	d := decoder{msg: "istio.workload.Address", b: b}
	for {
		ok, err := d.next()
		if err != nil {
			return nil, nil, malformed(err)
		}
		if !ok {
			return w, s, nil
		}
		switch d.num {
		case 1:
			// A oneof member replaces the other, and merges with a repeat of itself.
			if w == nil {
				w, s = &Workload{}, nil
			}
			err = d.message("workload", w.decode)
		case 2:
			if s == nil {
				w, s = nil, &Service{}
			}
			err = d.message("service", s.decode)
		default:
			err = d.skip()
		}
		if err != nil {
			return nil, nil, malformed(err)
		}
	}
}

func (w *Workload) decode(b []byte) error {
	d := decoder{msg: "istio.workload.Workload", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 20:
			w.UID, err = d.string("uid")
		case 1:
			w.Name, err = d.string("name")
		case 2:
			w.Namespace, err = d.string("namespace")
		case 3:
			var a []byte
			a, err = d.bytes("addresses")
			w.Addresses = append(w.Addresses, a)
		case 4:
			w.Network, err = d.string("network")
		case 5:
			err = setEnum(&d, "tunnel_protocol", &w.TunnelProtocol)
		case 6:
			w.TrustDomain, err = d.string("trust_domain")
		case 7:
			w.ServiceAccount, err = d.string("service_account")
		case 8:
			if w.Waypoint == nil {
				w.Waypoint = &GatewayAddress{}
			}
			err = d.message("waypoint", w.Waypoint.decode)
		case 9:
			w.Node, err = d.string("node")
		case 10:
			w.CanonicalName, err = d.string("canonical_name")
		case 11:
			w.CanonicalRevision, err = d.string("canonical_revision")
		case 12:
			err = setEnum(&d, "workload_type", &w.WorkloadType)
		case 13:
			w.WorkloadName, err = d.string("workload_name")
		case 22:
			err = d.message("services", w.decodeServicesEntry)
		case 16:
			var p string
			p, err = d.string("authorization_policies")
			w.AuthorizationPolicies = append(w.AuthorizationPolicies, p)
		case 17:
			err = setEnum(&d, "status", &w.Status)
		case 18:
			w.ClusterID, err = d.string("cluster_id")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

// decodeServicesEntry decodes one entry of the map services: a later entry of the same key
// replaces an earlier one.
func (w *Workload) decodeServicesEntry(b []byte) error {
	d := decoder{msg: "istio.workload.Workload.ServicesEntry", b: b}
	var key string
	var ports []Port
	for {
		ok, err := d.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch d.num {
		case 1:
			key, err = d.string("key")
		case 2:
			err = d.message("value", func(b []byte) error {
				var err error
				ports, err = decodePortList(b, ports)
				return err
			})
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
	if w.Services == nil {
		w.Services = map[string][]Port{}
	}
	w.Services[key] = ports
	return nil
}

func decodePortList(b []byte, ports []Port) ([]Port, error) {
	d := decoder{msg: "istio.workload.PortList", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return ports, err
		}
		if d.num != 1 {
			if err := d.skip(); err != nil {
				return ports, err
			}
			continue
		}
		var p Port
		if err := d.message("ports", p.decode); err != nil {
			return ports, err
		}
		ports = append(ports, p)
	}
}

func (s *Service) decode(b []byte) error {
	d := decoder{msg: "istio.workload.Service", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			s.Name, err = d.string("name")
		case 2:
			s.Namespace, err = d.string("namespace")
		case 3:
			s.Hostname, err = d.string("hostname")
		case 4:
			var a NetworkAddress
			err = d.message("addresses", a.decode)
			s.Addresses = append(s.Addresses, a)
		case 5:
			var p Port
			err = d.message("ports", p.decode)
			s.Ports = append(s.Ports, p)
		case 6:
			var n string
			n, err = d.string("subject_alt_names")
			s.SubjectAltNames = append(s.SubjectAltNames, n)
		case 7:
			if s.Waypoint == nil {
				s.Waypoint = &GatewayAddress{}
			}
			err = d.message("waypoint", s.Waypoint.decode)
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (p *Port) decode(b []byte) error {
	d := decoder{msg: "istio.workload.Port", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			p.ServicePort, err = d.uint32("service_port")
		case 2:
			p.TargetPort, err = d.uint32("target_port")
		case 3:
			err = setEnum(&d, "app_protocol", &p.AppProtocol)
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (a *NetworkAddress) decode(b []byte) error {
	d := decoder{msg: "istio.workload.NetworkAddress", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			a.Network, err = d.string("network")
		case 2:
			a.Address, err = d.bytes("address")
		case 3:
			var l uint32
			l, err = d.uint32("length")
			a.Length = &l
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (h *NamespacedHostname) decode(b []byte) error {
	d := decoder{msg: "istio.workload.NamespacedHostname", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			h.Namespace, err = d.string("namespace")
		case 2:
			h.Hostname, err = d.string("hostname")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}

func (g *GatewayAddress) decode(b []byte) error {
	d := decoder{msg: "istio.workload.GatewayAddress", b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch d.num {
		case 1:
			if g.Hostname == nil {
				g.Hostname, g.Address = &NamespacedHostname{}, nil
			}
			err = d.message("hostname", g.Hostname.decode)
		case 2:
			if g.Address == nil {
				g.Hostname, g.Address = nil, &NetworkAddress{}
			}
			err = d.message("address", g.Address.decode)
		case 3:
			g.HBONEMTLSPort, err = d.uint32("hbone_mtls_port")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
}
