package api_test

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/api/ca"
	"github.com/ambit-mesh/ambit/api/discovery"
	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/api/zds"
)

// The tables below restate, independently of our .proto files, the wire facts of Istio's
// published protos and of the Envoy xDS fields discovery.proto carries (see README.md for the
// upstream files). A field renumbered, renamed, retyped or added without updating them fails the
// test.

// Short names for the columns.
const (
	str  = protoreflect.StringKind
	byt  = protoreflect.BytesKind
	u32  = protoreflect.Uint32Kind
	i32  = protoreflect.Int32Kind
	i64  = protoreflect.Int64Kind
	boo  = protoreflect.BoolKind
	enm  = protoreflect.EnumKind
	msg  = protoreflect.MessageKind
	one  = "" // singular
	rep  = "repeated"
	mapf = "map"
	opt  = "optional" // proto3 optional (explicit presence)
)

type wantField struct {
	name  protoreflect.Name
	num   protoreflect.FieldNumber
	kind  protoreflect.Kind
	card  string
	typ   protoreflect.FullName // message or enum type, or map value type
	oneof protoreflect.Name
}

var wantMessages = map[protoreflect.FullName][]wantField{
	// workload.proto
	"istio.workload.Address": {
		{"workload", 1, msg, one, "istio.workload.Workload", "type"},
		{"service", 2, msg, one, "istio.workload.Service", "type"},
	},
	"istio.workload.Service": {
		{"name", 1, str, one, "", ""},
		{"namespace", 2, str, one, "", ""},
		{"hostname", 3, str, one, "", ""},
		{"addresses", 4, msg, rep, "istio.workload.NetworkAddress", ""},
		{"ports", 5, msg, rep, "istio.workload.Port", ""},
		{"subject_alt_names", 6, str, rep, "", ""},
		{"waypoint", 7, msg, one, "istio.workload.GatewayAddress", ""},
		{"load_balancing", 8, msg, one, "istio.workload.LoadBalancing", ""},
		{"ip_families", 9, enm, one, "istio.workload.IPFamilies", ""},
		{"extensions", 10, msg, rep, "istio.workload.Extension", ""},
		{"canonical", 11, boo, one, "", ""},
		{"ingress_use_waypoint", 12, boo, one, "", ""},
		{"weighted_waypoints", 13, msg, rep, "istio.workload.WeightedWaypoint", ""},
		{"visibility", 14, enm, one, "istio.workload.Service.Visibility", ""},
	},
	"istio.workload.LoadBalancing": {
		{"routing_preference", 1, enm, rep, "istio.workload.LoadBalancing.Scope", ""},
		{"mode", 2, enm, one, "istio.workload.LoadBalancing.Mode", ""},
		{"health_policy", 3, enm, one, "istio.workload.LoadBalancing.HealthPolicy", ""},
	},
	"istio.workload.Workload": {
		{"uid", 20, str, one, "", ""},
		{"name", 1, str, one, "", ""},
		{"namespace", 2, str, one, "", ""},
		{"addresses", 3, byt, rep, "", ""},
		{"hostname", 21, str, one, "", ""},
		{"network", 4, str, one, "", ""},
		{"tunnel_protocol", 5, enm, one, "istio.workload.TunnelProtocol", ""},
		{"trust_domain", 6, str, one, "", ""},
		{"service_account", 7, str, one, "", ""},
		{"waypoint", 8, msg, one, "istio.workload.GatewayAddress", ""},
		{"network_gateway", 19, msg, one, "istio.workload.GatewayAddress", ""},
		{"node", 9, str, one, "", ""},
		{"canonical_name", 10, str, one, "", ""},
		{"canonical_revision", 11, str, one, "", ""},
		{"workload_type", 12, enm, one, "istio.workload.WorkloadType", ""},
		{"workload_name", 13, str, one, "", ""},
		{"native_tunnel", 14, boo, one, "", ""},
		{"application_tunnel", 23, msg, one, "istio.workload.ApplicationTunnel", ""},
		{"services", 22, msg, mapf, "istio.workload.PortList", ""},
		{"authorization_policies", 16, str, rep, "", ""},
		{"status", 17, enm, one, "istio.workload.WorkloadStatus", ""},
		{"cluster_id", 18, str, one, "", ""},
		{"locality", 24, msg, one, "istio.workload.Locality", ""},
		{"network_mode", 25, enm, one, "istio.workload.NetworkMode", ""},
		{"extensions", 26, msg, rep, "istio.workload.Extension", ""},
		{"capacity", 27, msg, one, "google.protobuf.UInt32Value", ""},
	},
	"istio.workload.Locality": {
		{"region", 1, str, one, "", ""},
		{"zone", 2, str, one, "", ""},
		{"subzone", 3, str, one, "", ""},
	},
	"istio.workload.PortList": {
		{"ports", 1, msg, rep, "istio.workload.Port", ""},
	},
	"istio.workload.Port": {
		{"service_port", 1, u32, one, "", ""},
		{"target_port", 2, u32, one, "", ""},
		{"app_protocol", 3, enm, one, "istio.workload.AppProtocol", ""},
	},
	"istio.workload.ApplicationTunnel": {
		{"protocol", 1, enm, one, "istio.workload.ApplicationTunnel.Protocol", ""},
		{"port", 2, u32, one, "", ""},
	},
	"istio.workload.GatewayAddress": {
		{"hostname", 1, msg, one, "istio.workload.NamespacedHostname", "destination"},
		{"address", 2, msg, one, "istio.workload.NetworkAddress", "destination"},
		{"hbone_mtls_port", 3, u32, one, "", ""},
	},
	"istio.workload.WeightedWaypoint": {
		{"destination", 1, msg, one, "istio.workload.GatewayAddress", ""},
		{"weight", 2, u32, one, "", ""},
	},
	"istio.workload.NetworkAddress": {
		{"network", 1, str, one, "", ""},
		{"address", 2, byt, one, "", ""},
		{"length", 3, u32, opt, "", ""},
	},
	"istio.workload.NamespacedHostname": {
		{"namespace", 1, str, one, "", ""},
		{"hostname", 2, str, one, "", ""},
	},
	"istio.workload.Extension": {
		{"name", 1, str, one, "", ""},
		{"config", 2, msg, one, "google.protobuf.Any", ""},
	},

	// authorization.proto
	"istio.security.Authorization": {
		{"name", 1, str, one, "", ""},
		{"namespace", 2, str, one, "", ""},
		{"scope", 3, enm, one, "istio.security.Scope", ""},
		{"action", 4, enm, one, "istio.security.Action", ""},
		{"rules", 5, msg, rep, "istio.security.Rule", ""},
		{"dry_run", 6, boo, one, "", ""},
		{"extensions", 7, msg, rep, "istio.workload.Extension", ""},
	},
	"istio.security.Rule": {
		{"clauses", 1, msg, rep, "istio.security.Clause", ""},
	},
	"istio.security.Clause": {
		{"matches", 2, msg, rep, "istio.security.Match", ""},
	},
	"istio.security.Match": {
		{"namespaces", 1, msg, rep, "istio.security.StringMatch", ""},
		{"not_namespaces", 2, msg, rep, "istio.security.StringMatch", ""},
		{"service_accounts", 11, msg, rep, "istio.security.ServiceAccountMatch", ""},
		{"not_service_accounts", 12, msg, rep, "istio.security.ServiceAccountMatch", ""},
		{"principals", 3, msg, rep, "istio.security.StringMatch", ""},
		{"not_principals", 4, msg, rep, "istio.security.StringMatch", ""},
		{"source_ips", 5, msg, rep, "istio.security.Address", ""},
		{"not_source_ips", 6, msg, rep, "istio.security.Address", ""},
		{"destination_ips", 7, msg, rep, "istio.security.Address", ""},
		{"not_destination_ips", 8, msg, rep, "istio.security.Address", ""},
		{"destination_ports", 9, u32, rep, "", ""},
		{"not_destination_ports", 10, u32, rep, "", ""},
		{"extensions", 13, msg, rep, "istio.workload.Extension", ""},
	},
	"istio.security.Address": {
		{"address", 1, byt, one, "", ""},
		{"length", 2, u32, one, "", ""},
	},
	"istio.security.ServiceAccountMatch": {
		{"namespace", 1, str, one, "", ""},
		{"serviceAccount", 2, str, one, "", ""},
	},
	"istio.security.StringMatch": {
		{"exact", 1, str, one, "", "match_type"},
		{"prefix", 2, str, one, "", "match_type"},
		{"suffix", 3, str, one, "", "match_type"},
		{"presence", 4, msg, one, "google.protobuf.Empty", "match_type"},
	},

	// zds.proto
	"istio.workload.zds.ZdsHello": {
		{"version", 1, enm, one, "istio.workload.zds.Version", ""},
	},
	"istio.workload.zds.WorkloadInfo": {
		{"name", 1, str, one, "", ""},
		{"namespace", 2, str, one, "", ""},
		{"service_account", 3, str, one, "", ""},
	},
	"istio.workload.zds.AddWorkload": {
		{"uid", 1, str, one, "", ""},
		{"workload_info", 2, msg, one, "istio.workload.zds.WorkloadInfo", ""},
	},
	"istio.workload.zds.KeepWorkload": {
		{"uid", 1, str, one, "", ""},
	},
	"istio.workload.zds.DelWorkload": {
		{"uid", 2, str, one, "", ""},
	},
	"istio.workload.zds.SnapshotSent": {},
	"istio.workload.zds.Ack": {
		{"error", 1, str, one, "", ""},
	},
	"istio.workload.zds.WorkloadRequest": {
		{"add", 1, msg, one, "istio.workload.zds.AddWorkload", "payload"},
		{"keep", 5, msg, one, "istio.workload.zds.KeepWorkload", "payload"},
		{"del", 2, msg, one, "istio.workload.zds.DelWorkload", "payload"},
		{"snapshot_sent", 3, msg, one, "istio.workload.zds.SnapshotSent", "payload"},
	},
	"istio.workload.zds.WorkloadResponse": {
		{"ack", 1, msg, one, "istio.workload.zds.Ack", "payload"},
	},

	// ca.proto
	"istio.v1.auth.IstioCertificateRequest": {
		{"csr", 1, str, one, "", ""},
		{"validity_duration", 3, i64, one, "", ""},
		{"metadata", 4, msg, one, "google.protobuf.Struct", ""},
	},
	"istio.v1.auth.IstioCertificateResponse": {
		{"cert_chain", 1, str, rep, "", ""},
	},

	// discovery.proto: Envoy's envoy.service.discovery.v3 (and envoy.config.core.v3.Node,
	// google.rpc.Status) fields under our own package name. discovery/wire_test.go checks them
	// against Envoy's generated types as well.
	"ambit.discovery.v3.DeltaDiscoveryRequest": {
		{"node", 1, msg, one, "ambit.discovery.v3.Node", ""},
		{"type_url", 2, str, one, "", ""},
		{"resource_names_subscribe", 3, str, rep, "", ""},
		{"resource_names_unsubscribe", 4, str, rep, "", ""},
		{"initial_resource_versions", 5, msg, mapf, "", ""},
		{"response_nonce", 6, str, one, "", ""},
		{"error_detail", 7, msg, one, "ambit.discovery.v3.Status", ""},
	},
	"ambit.discovery.v3.DeltaDiscoveryResponse": {
		{"resources", 2, msg, rep, "ambit.discovery.v3.Resource", ""},
		{"type_url", 4, str, one, "", ""},
		{"nonce", 5, str, one, "", ""},
		{"removed_resources", 6, str, rep, "", ""},
	},
	"ambit.discovery.v3.Resource": {
		{"version", 1, str, one, "", ""},
		{"resource", 2, msg, one, "google.protobuf.Any", ""},
		{"name", 3, str, one, "", ""},
		{"aliases", 4, str, rep, "", ""},
	},
	"ambit.discovery.v3.Node": {
		{"id", 1, str, one, "", ""},
		{"metadata", 3, msg, one, "google.protobuf.Struct", ""},
	},
	"ambit.discovery.v3.Status": {
		{"code", 1, i32, one, "", ""},
		{"message", 2, str, one, "", ""},
	},
}

// wantEnums lists every value of every enum, by name and number.
var wantEnums = map[protoreflect.FullName]map[protoreflect.Name]protoreflect.EnumNumber{
	"istio.workload.Service.Visibility": {"PUBLIC": 0, "NAMESPACE": 1},
	"istio.workload.IPFamilies":         {"AUTOMATIC": 0, "IPV4_ONLY": 1, "IPV6_ONLY": 2, "DUAL": 3},
	"istio.workload.NetworkMode":        {"STANDARD": 0, "HOST_NETWORK": 1},
	"istio.workload.LoadBalancing.Scope": {
		"UNSPECIFIED_SCOPE": 0, "REGION": 1, "ZONE": 2, "SUBZONE": 3, "NODE": 4, "CLUSTER": 5, "NETWORK": 6,
	},
	"istio.workload.LoadBalancing.Mode":         {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2, "PASSTHROUGH": 3},
	"istio.workload.LoadBalancing.HealthPolicy": {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1},
	"istio.workload.WorkloadStatus":             {"HEALTHY": 0, "UNHEALTHY": 1},
	"istio.workload.WorkloadType":               {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3},
	"istio.workload.AppProtocol":                {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3, "TCP": 4, "TLS": 5},
	"istio.workload.TunnelProtocol":             {"NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2},
	"istio.workload.ApplicationTunnel.Protocol": {"NONE": 0, "PROXY": 1},
	"istio.security.Scope":                      {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2},
	"istio.security.Action":                     {"ALLOW": 0, "DENY": 1},
	"istio.workload.zds.Version":                {"NOT_USED": 0, "V1": 1},
}

// wantFiles are the files whose every message and enum (nested ones included) must have a row
// above, so a type added to a .proto without a row fails too.
var wantFiles = []string{
	"workload/workload.proto",
	"security/authorization.proto",
	"zds/zds.proto",
	"ca/ca.proto",
	"discovery/discovery.proto",
}

func findMessage(t *testing.T, name protoreflect.FullName) protoreflect.MessageDescriptor {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		t.Fatalf("%s is a %T, want a message", name, d)
	}
	return md
}

func TestMessageFields(t *testing.T) {
	for name, fields := range wantMessages {
		t.Run(string(name), func(t *testing.T) {
			md := findMessage(t, name)
			if got, want := md.Fields().Len(), len(fields); got != want {
				t.Errorf("got %d fields, want %d", got, want)
			}
			for _, w := range fields {
				f := md.Fields().ByNumber(w.num)
				if f == nil {
					t.Errorf("field %d (%s): missing", w.num, w.name)
					continue
				}
				if f.Name() != w.name {
					t.Errorf("field %d: got name %s, want %s", w.num, f.Name(), w.name)
				}
				if f.Kind() != w.kind {
					t.Errorf("field %s: got kind %v, want %v", w.name, f.Kind(), w.kind)
				}
				if got := cardinality(f); got != w.card {
					t.Errorf("field %s: got cardinality %q, want %q", w.name, got, w.card)
				}
				if got := typeName(f); got != w.typ {
					t.Errorf("field %s: got type %q, want %q", w.name, got, w.typ)
				}
				var oneof protoreflect.Name
				if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
					oneof = o.Name()
				}
				if oneof != w.oneof {
					t.Errorf("field %s: got oneof %q, want %q", w.name, oneof, w.oneof)
				}
			}
		})
	}
}

func cardinality(f protoreflect.FieldDescriptor) string {
	switch {
	case f.IsMap():
		return mapf
	case f.IsList():
		return rep
	case f.HasOptionalKeyword():
		return opt
	}
	return one
}

func typeName(f protoreflect.FieldDescriptor) protoreflect.FullName {
	if f.IsMap() {
		if k := f.MapKey().Kind(); k != protoreflect.StringKind {
			return "bad map key " + protoreflect.FullName(k.String())
		}
		f = f.MapValue()
	}
	switch {
	case f.Message() != nil:
		return f.Message().FullName()
	case f.Enum() != nil:
		return f.Enum().FullName()
	}
	return ""
}

func TestEnumValues(t *testing.T) {
	for name, values := range wantEnums {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
		if err != nil {
			t.Errorf("find %s: %v", name, err)
			continue
		}
		ed, ok := d.(protoreflect.EnumDescriptor)
		if !ok {
			t.Errorf("%s is a %T, want an enum", name, d)
			continue
		}
		if got, want := ed.Values().Len(), len(values); got != want {
			t.Errorf("%s: got %d values, want %d", name, got, want)
		}
		for vname, num := range values {
			v := ed.Values().ByName(vname)
			if v == nil {
				t.Errorf("%s.%s: missing", name, vname)
				continue
			}
			if v.Number() != num {
				t.Errorf("%s.%s: got %d, want %d", name, vname, v.Number(), num)
			}
		}
	}
}

func TestFilesDeclareOnlyCheckedTypes(t *testing.T) {
	for _, path := range wantFiles {
		fd, err := protoregistry.GlobalFiles.FindFileByPath(path)
		if err != nil {
			t.Errorf("find file %s: %v", path, err)
			continue
		}
		var walk func(msgs protoreflect.MessageDescriptors, enums protoreflect.EnumDescriptors)
		walk = func(msgs protoreflect.MessageDescriptors, enums protoreflect.EnumDescriptors) {
			for i := range enums.Len() {
				if _, ok := wantEnums[enums.Get(i).FullName()]; !ok {
					t.Errorf("%s: enum %s has no row in wantEnums", path, enums.Get(i).FullName())
				}
			}
			for i := range msgs.Len() {
				m := msgs.Get(i)
				if m.IsMapEntry() {
					continue
				}
				if _, ok := wantMessages[m.FullName()]; !ok {
					t.Errorf("%s: message %s has no row in wantMessages", path, m.FullName())
				}
				walk(m.Messages(), m.Enums())
			}
		}
		walk(fd.Messages(), fd.Enums())
	}
}

func TestCertificateService(t *testing.T) {
	if got, want := ca.IstioCertificateService_CreateCertificate_FullMethodName,
		"/istio.v1.auth.IstioCertificateService/CreateCertificate"; got != want {
		t.Errorf("got method path %s, want %s", got, want)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("istio.v1.auth.IstioCertificateService")
	if err != nil {
		t.Fatalf("find service: %v", err)
	}
	sd := d.(protoreflect.ServiceDescriptor)
	if got := sd.Methods().Len(); got != 1 {
		t.Errorf("got %d methods, want 1", got)
	}
	m := sd.Methods().ByName("CreateCertificate")
	if m == nil {
		t.Fatal("method CreateCertificate: missing")
	}
	if m.IsStreamingClient() || m.IsStreamingServer() {
		t.Error("CreateCertificate: got streaming, want unary")
	}
	if got, want := m.Input().FullName(), protoreflect.FullName("istio.v1.auth.IstioCertificateRequest"); got != want {
		t.Errorf("got input %s, want %s", got, want)
	}
	if got, want := m.Output().FullName(), protoreflect.FullName("istio.v1.auth.IstioCertificateResponse"); got != want {
		t.Errorf("got output %s, want %s", got, want)
	}
}

// TestDeltaADSMethod checks the path ztunnel's xDS client calls: Envoy's method, whatever
// discovery.proto's own package is.
func TestDeltaADSMethod(t *testing.T) {
	if got, want := discovery.DeltaAggregatedResourcesMethod,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"; got != want {
		t.Errorf("got method path %s, want %s", got, want)
	}
}

// TestZDSWireBytes checks the encoding of the ZDS messages against bytes built by hand from the
// upstream field numbers, independently of the descriptors.
func TestZDSWireBytes(t *testing.T) {
	strField := func(b []byte, num protowire.Number, s string) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	msgField := func(b []byte, num protowire.Number, m []byte) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendBytes(b, m)
	}

	info := strField(strField(strField(nil, 1, "web-0"), 2, "shop"), 3, "web")
	add := msgField(strField(nil, 1, "0b1e-uid"), 2, info)
	hello := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)

	tests := []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"hello", &zds.ZdsHello{Version: zds.Version_V1}, hello},
		{"add", &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Add{Add: &zds.AddWorkload{
			Uid:          "0b1e-uid",
			WorkloadInfo: &zds.WorkloadInfo{Name: "web-0", Namespace: "shop", ServiceAccount: "web"},
		}}}, msgField(nil, 1, add)},
		{"keep", &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Keep{Keep: &zds.KeepWorkload{Uid: "u"}}},
			msgField(nil, 5, strField(nil, 1, "u"))},
		{"del", &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_Del{Del: &zds.DelWorkload{Uid: "u"}}},
			msgField(nil, 2, strField(nil, 2, "u"))},
		{"snapshot", &zds.WorkloadRequest{Payload: &zds.WorkloadRequest_SnapshotSent{SnapshotSent: &zds.SnapshotSent{}}},
			msgField(nil, 3, nil)},
		{"ack", &zds.WorkloadResponse{Payload: &zds.WorkloadResponse_Ack{Ack: &zds.Ack{Error: "no netns"}}},
			msgField(nil, 1, strField(nil, 1, "no netns"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tt.msg)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if string(got) != string(tt.want) {
				t.Errorf("got bytes %x, want %x", got, tt.want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	ip := netip.MustParseAddr("10.244.1.7").AsSlice()
	ip6 := netip.MustParseAddr("fd00::7").AsSlice()
	waypoint := &workload.GatewayAddress{
		Destination: &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{
			Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
		}},
		HboneMtlsPort: 15008,
	}
	w := &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid:               "Kubernetes//Pod/shop/web-0",
		Name:              "web-0",
		Namespace:         "shop",
		Addresses:         [][]byte{ip, ip6},
		Network:           "net1",
		TunnelProtocol:    workload.TunnelProtocol_HBONE,
		TrustDomain:       "cluster.local",
		ServiceAccount:    "web",
		Waypoint:          waypoint,
		NetworkGateway:    &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{Network: "net2", Address: ip}}, HboneMtlsPort: 15008},
		Node:              "n1",
		CanonicalName:     "web",
		CanonicalRevision: "v1",
		WorkloadType:      workload.WorkloadType_POD,
		WorkloadName:      "web",
		ApplicationTunnel: &workload.ApplicationTunnel{Protocol: workload.ApplicationTunnel_PROXY, Port: 15088},
		Services: map[string]*workload.PortList{
			"shop/web.shop.svc.cluster.local": {Ports: []*workload.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workload.AppProtocol_HTTP11}}},
		},
		AuthorizationPolicies: []string{"shop/allow-frontend"},
		Status:                workload.WorkloadStatus_UNHEALTHY,
		ClusterId:             "Kubernetes",
		Locality:              &workload.Locality{Region: "r", Zone: "z", Subzone: "s"},
		NetworkMode:           workload.NetworkMode_HOST_NETWORK,
		Capacity:              wrapperspb.UInt32(3),
	}}}
	length := uint32(16)
	s := &workload.Address{Type: &workload.Address_Service{Service: &workload.Service{
		Name:              "web",
		Namespace:         "shop",
		Hostname:          "web.shop.svc.cluster.local",
		Addresses:         []*workload.NetworkAddress{{Address: ip}, {Address: ip6, Length: &length}},
		Ports:             []*workload.Port{{ServicePort: 80, TargetPort: 8080}},
		SubjectAltNames:   []string{"spiffe://cluster.local/ns/shop/sa/web"},
		Waypoint:          waypoint,
		LoadBalancing:     &workload.LoadBalancing{RoutingPreference: []workload.LoadBalancing_Scope{workload.LoadBalancing_NETWORK, workload.LoadBalancing_ZONE}, Mode: workload.LoadBalancing_FAILOVER},
		IpFamilies:        workload.IPFamilies_DUAL,
		WeightedWaypoints: []*workload.WeightedWaypoint{{Destination: waypoint, Weight: 90}},
		Visibility:        workload.Service_NAMESPACE,
	}}}
	a := &security.Authorization{
		Name:      "allow-frontend",
		Namespace: "shop",
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		DryRun:    true,
		Rules: []*security.Rule{{Clauses: []*security.Clause{
			{Matches: []*security.Match{{
				Namespaces:          []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "front"}}},
				NotPrincipals:       []*security.StringMatch{{MatchType: &security.StringMatch_Prefix{Prefix: "cluster.local/ns/x/"}}},
				Principals:          []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}},
				ServiceAccounts:     []*security.ServiceAccountMatch{{Namespace: "front", ServiceAccount: "ui"}},
				SourceIps:           []*security.Address{{Address: ip, Length: 24}},
				NotDestinationIps:   []*security.Address{{Address: ip6, Length: 128}},
				DestinationPorts:    []uint32{8080, 9090},
				NotDestinationPorts: []uint32{15008},
			}}},
			{Matches: []*security.Match{{NotNamespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Suffix{Suffix: "-dev"}}}}}},
		}}},
	}
	req := &ca.IstioCertificateRequest{
		Csr:              "-----BEGIN CERTIFICATE REQUEST-----\n...",
		ValidityDuration: 86400,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"ImpersonatedIdentity": structpb.NewStringValue("spiffe://cluster.local/ns/shop/sa/web"),
		}},
	}

	body, err := anypb.New(w)
	if err != nil {
		t.Fatal(err)
	}
	xdsReq := &discovery.DeltaDiscoveryRequest{
		Node: &discovery.Node{Id: "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local", Metadata: &structpb.Struct{
			Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue("n1")},
		}},
		TypeUrl:                  "type.googleapis.com/istio.workload.Address",
		ResourceNamesSubscribe:   []string{"*", "shop/web.shop.svc.cluster.local"},
		ResourceNamesUnsubscribe: []string{"gone"},
		InitialResourceVersions:  map[string]string{"Kubernetes//Pod/shop/web-0": "7"},
		ResponseNonce:            "n1",
		ErrorDetail:              &discovery.Status{Code: 3, Message: "refused 1 resource(s)"},
	}
	xdsResp := &discovery.DeltaDiscoveryResponse{
		Resources:        []*discovery.Resource{{Version: "7", Resource: body, Name: "Kubernetes//Pod/shop/web-0", Aliases: []string{"net1/10.244.1.7"}}},
		TypeUrl:          "type.googleapis.com/istio.workload.Address",
		Nonce:            "n2",
		RemovedResources: []string{"Kubernetes//Pod/shop/web-1"},
	}

	for _, m := range []proto.Message{w, s, a, req, &ca.IstioCertificateResponse{CertChain: []string{"leaf", "root"}}, xdsReq, xdsResp} {
		name := m.ProtoReflect().Descriptor().FullName()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("%s: marshal: %v", name, err)
		}
		got := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(b, got); err != nil {
			t.Fatalf("%s: unmarshal: %v", name, err)
		}
		if !proto.Equal(got, m) {
			t.Errorf("%s: round trip changed the message:\ngot  %v\nwant %v", name, got, m)
		}
	}
}
