package apiwire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

var (
	ip4 = netip.MustParseAddr("10.244.1.7").AsSlice()
	ip6 = netip.MustParseAddr("fd00::7").AsSlice()
)

func hostWaypoint() *workload.GatewayAddress {
	return &workload.GatewayAddress{
		Destination: &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{
			Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
		}},
		HboneMtlsPort: 15008,
	}
}

func ipWaypoint(length *uint32) *workload.GatewayAddress {
	return &workload.GatewayAddress{Destination: &workload.GatewayAddress_Address{Address: &workload.NetworkAddress{
		Network: "net2", Address: ip4, Length: length,
	}}}
}

// fullWorkload sets every field of Workload, the ones apiwire skips included.
func fullWorkload() *workload.Workload {
	ext, _ := anypb.New(wrapperspb.String("x"))
	return &workload.Workload{
		Uid: "Kubernetes//Pod/shop/web-0", Name: "web-0", Namespace: "shop",
		Addresses: [][]byte{ip4, ip6, {}}, Hostname: "web.example.com", Network: "net1",
		TunnelProtocol: workload.TunnelProtocol_HBONE, TrustDomain: "td", ServiceAccount: "web",
		Waypoint: hostWaypoint(), NetworkGateway: ipWaypoint(nil), Node: "n1",
		CanonicalName: "web", CanonicalRevision: "v1", WorkloadType: workload.WorkloadType_JOB,
		WorkloadName: "web", NativeTunnel: true,
		ApplicationTunnel: &workload.ApplicationTunnel{Protocol: workload.ApplicationTunnel_PROXY, Port: 15088},
		Services: map[string]*workload.PortList{
			"shop/web.shop.svc.cluster.local": {Ports: []*workload.Port{
				{ServicePort: 80, TargetPort: 8080, AppProtocol: workload.AppProtocol_HTTP11},
				{ServicePort: 443, AppProtocol: workload.AppProtocol(42)},
			}},
			"shop/empty": {},
			"":           {Ports: []*workload.Port{{ServicePort: 1}}},
		},
		AuthorizationPolicies: []string{"shop/a", "shop/b"},
		Status:                workload.WorkloadStatus_UNHEALTHY, ClusterId: "Kubernetes",
		Locality:    &workload.Locality{Region: "r", Zone: "z", Subzone: "s"},
		NetworkMode: workload.NetworkMode_HOST_NETWORK,
		Extensions:  []*workload.Extension{{Name: "e", Config: ext}},
		Capacity:    wrapperspb.UInt32(3),
	}
}

func fullService() *workload.Service {
	length := uint32(0)
	return &workload.Service{
		Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
		Addresses:         []*workload.NetworkAddress{{Address: ip4}, {Network: "n", Address: ip6, Length: &length}},
		Ports:             []*workload.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workload.AppProtocol_GRPC}, {}},
		SubjectAltNames:   []string{"spiffe://cluster.local/ns/shop/sa/web", ""},
		Waypoint:          ipWaypoint(&length),
		LoadBalancing:     &workload.LoadBalancing{RoutingPreference: []workload.LoadBalancing_Scope{workload.LoadBalancing_ZONE}, Mode: workload.LoadBalancing_FAILOVER},
		IpFamilies:        workload.IPFamilies_DUAL,
		Canonical:         true,
		WeightedWaypoints: []*workload.WeightedWaypoint{{Destination: hostWaypoint(), Weight: 90}},
		Visibility:        workload.Service_NAMESPACE,
	}
}

func fullAuthorization() *security.Authorization {
	return &security.Authorization{
		Name: "allow-frontend", Namespace: "shop", Scope: security.Scope_WORKLOAD_SELECTOR,
		Action: security.Action_DENY, DryRun: true,
		Rules: []*security.Rule{
			{Clauses: []*security.Clause{
				{Matches: []*security.Match{{
					Namespaces:          []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "front"}}, {MatchType: &security.StringMatch_Exact{}}},
					NotNamespaces:       []*security.StringMatch{{MatchType: &security.StringMatch_Suffix{Suffix: "-dev"}}, {}},
					ServiceAccounts:     []*security.ServiceAccountMatch{{Namespace: "front", ServiceAccount: "ui"}},
					NotServiceAccounts:  []*security.ServiceAccountMatch{{ServiceAccount: "x"}},
					Principals:          []*security.StringMatch{presence},
					NotPrincipals:       []*security.StringMatch{{MatchType: &security.StringMatch_Prefix{Prefix: "cluster.local/ns/x/"}}},
					SourceIps:           []*security.Address{{Address: ip4, Length: 24}},
					NotSourceIps:        []*security.Address{{Address: ip6}},
					DestinationIps:      []*security.Address{{Address: ip4, Length: 32}},
					NotDestinationIps:   []*security.Address{{Address: ip6, Length: 128}},
					DestinationPorts:    []uint32{8080, 9090},
					NotDestinationPorts: []uint32{15008},
					Extensions:          []*workload.Extension{{Name: "e"}},
				}, {}}},
				{},
			}},
			{},
		},
		Extensions: []*workload.Extension{{Name: "e"}},
	}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	return b
}

func TestDecodeAddressWorkload(t *testing.T) {
	for name, w := range map[string]*workload.Workload{
		"full":        fullWorkload(),
		"empty":       {},
		"ip-waypoint": {Uid: "u", Waypoint: ipWaypoint(nil)},
	} {
		b := marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: w}})
		got, svc, err := apiwire.DecodeAddress(b)
		if err != nil || got == nil || svc != nil {
			t.Fatalf("%s: got %v, %v, %v; want a workload", name, got, svc, err)
		}
		if d := diff(got, wantWorkload(w)); d != "" {
			t.Errorf("%s: %s", name, d)
		}
	}
}

func TestDecodeAddressService(t *testing.T) {
	for name, s := range map[string]*workload.Service{"full": fullService(), "empty": {}} {
		b := marshal(t, &workload.Address{Type: &workload.Address_Service{Service: s}})
		w, got, err := apiwire.DecodeAddress(b)
		if err != nil || got == nil || w != nil {
			t.Fatalf("%s: got %v, %v, %v; want a service", name, w, got, err)
		}
		if d := diff(got, wantService(s)); d != "" {
			t.Errorf("%s: %s", name, d)
		}
	}
}

func TestDecodeAuthorization(t *testing.T) {
	for name, a := range map[string]*security.Authorization{
		"full":    fullAuthorization(),
		"empty":   {},
		"unknown": {Name: "n", Scope: security.Scope(7), Action: security.Action(-1)},
	} {
		got, err := apiwire.DecodeAuthorization(marshal(t, a))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := diff(got, wantAuthorization(a)); d != "" {
			t.Errorf("%s: %s", name, d)
		}
	}
}

// TestDecodeMerges checks the decoding of a message whose fields repeat, as concatenated
// encodings are, against the generated decoder: scalars replaced, messages merged, repeated
// fields appended, map entries replaced, a oneof switched.
func TestDecodeMerges(t *testing.T) {
	first := &workload.Workload{Uid: "a", Addresses: [][]byte{ip4}, Waypoint: hostWaypoint(),
		Services: map[string]*workload.PortList{"k": {Ports: []*workload.Port{{ServicePort: 1}}}, "j": {}}}
	second := &workload.Workload{Name: "b", Addresses: [][]byte{ip6}, Waypoint: &workload.GatewayAddress{
		Destination: &workload.GatewayAddress_Hostname{Hostname: &workload.NamespacedHostname{Hostname: "other"}}},
		Services: map[string]*workload.PortList{"k": {Ports: []*workload.Port{{ServicePort: 2}}}}}
	third := &workload.Workload{Waypoint: ipWaypoint(nil)}
	inputs := [][]byte{
		append(marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: first}}),
			marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: second}})...),
		append(marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: first}}),
			marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: third}})...),
		append(marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: first}}),
			marshal(t, &workload.Address{Type: &workload.Address_Service{Service: fullService()}})...),
		append(marshal(t, &workload.Address{Type: &workload.Address_Service{Service: fullService()}}),
			marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: second}})...),
	}
	for i, b := range inputs {
		compareAddress(t, b, true)
		if t.Failed() {
			t.Fatalf("input %d", i)
		}
	}
	a := append(marshal(t, fullAuthorization()), marshal(t, &security.Authorization{Name: "x",
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{Namespaces: []*security.StringMatch{presence}}}}}}}})...)
	compareAuthorization(t, a, true)
	// A StringMatch whose oneof is set twice keeps the last member.
	sm := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "exact")
	sm = append(sm, marshal(t, presence)...)
	sm = append(sm, protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "suffix")...)
	m := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), sm)
	c := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), m)
	r := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), c)
	compareAuthorization(t, protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), r), true)
}

// TestDecodeUnpackedPorts checks that destination ports are read packed (proto3's encoding)
// and unpacked (what an older encoder may send), mixed.
func TestDecodeUnpackedPorts(t *testing.T) {
	var m []byte
	m = protowire.AppendVarint(protowire.AppendTag(m, 9, protowire.VarintType), 80)
	m = protowire.AppendBytes(protowire.AppendTag(m, 9, protowire.BytesType), protowire.AppendVarint(protowire.AppendVarint(nil, 81), 1<<33|82))
	m = protowire.AppendVarint(protowire.AppendTag(m, 10, protowire.VarintType), 1)
	c := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), m)
	r := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), c)
	b := protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), r)
	got := compareAuthorization(t, b, true)
	if ports := got.Rules[0].Clauses[0].Matches[0].DestinationPorts; !reflect.DeepEqual(ports, []uint32{80, 81, 82}) {
		t.Errorf("got ports %v, want [80 81 82]", ports)
	}
}

// compareAddress decodes b with apiwire and with the generated decoder and fails when both
// accept it and disagree, or, with mustAccept, when either refuses it.
func compareAddress(t testing.TB, b []byte, mustAccept bool) {
	t.Helper()
	w, s, err := apiwire.DecodeAddress(b)
	var ref workload.Address
	refErr := proto.Unmarshal(b, &ref)
	if mustAccept && (err != nil || refErr != nil) {
		t.Fatalf("apiwire: %v; generated: %v", err, refErr)
	}
	if err != nil || refErr != nil {
		return
	}
	if d := diff(w, nilIfNil(wantWorkload, ref.GetWorkload())); d != "" {
		t.Errorf("workload%s", d)
	}
	if d := diff(s, nilIfNil(wantService, ref.GetService())); d != "" {
		t.Errorf("service%s", d)
	}
}

func compareAuthorization(t testing.TB, b []byte, mustAccept bool) *apiwire.Authorization {
	t.Helper()
	a, err := apiwire.DecodeAuthorization(b)
	var ref security.Authorization
	refErr := proto.Unmarshal(b, &ref)
	if mustAccept && (err != nil || refErr != nil) {
		t.Fatalf("apiwire: %v; generated: %v", err, refErr)
	}
	if err != nil || refErr != nil {
		return nil
	}
	if d := diff(a, wantAuthorization(&ref)); d != "" {
		t.Errorf("authorization%s", d)
	}
	return a
}

func nilIfNil[T, U any](f func(*T) *U, v *T) *U {
	if v == nil {
		return nil
	}
	return f(v)
}

func TestDecodeErrors(t *testing.T) {
	tag := protowire.AppendTag
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(nil, num, protowire.BytesType), s)
	}
	wrap := func(num protowire.Number, b []byte) []byte {
		return protowire.AppendBytes(tag(nil, num, protowire.BytesType), b)
	}
	full := marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: fullWorkload()}})
	tests := []struct {
		name  string
		b     []byte
		authz bool
		want  string // in the error
	}{
		{"uid as varint", wrap(1, protowire.AppendVarint(tag(nil, 20, protowire.VarintType), 1)), false, "istio.workload.Address.workload: istio.workload.Workload.uid: wire type 0, want 2"},
		{"truncated", full[:len(full)-3], false, "istio.workload.Address.workload"},
		{"truncated tag", []byte{0x80}, false, "istio.workload.Address: field tag"},
		{"field 0", protowire.AppendVarint([]byte{0}, 1), false, "istio.workload.Address: field tag"},
		{"bad UTF-8", wrap(2, str(3, "\xff")), false, "istio.workload.Service.hostname: invalid UTF-8"},
		{"port as bytes", wrap(2, wrap(5, str(1, "80"))), false, "istio.workload.Port.service_port: wire type 2, want 0"},
		{"map key", wrap(1, wrap(22, str(1, "\xc0"))), false, "istio.workload.Workload.ServicesEntry.key: invalid UTF-8"},
		{"waypoint", wrap(1, wrap(8, wrap(2, protowire.AppendVarint(tag(nil, 3, protowire.BytesType), 9)))), false, "istio.workload.GatewayAddress.address: istio.workload.NetworkAddress.length: wire type 2, want 0"},
		{"skipped field truncated", wrap(1, protowire.AppendVarint(tag(nil, 24, protowire.BytesType), 9)), false, "istio.workload.Workload: field 24"},
		{"end group", tag(nil, 3, protowire.EndGroupType), false, "istio.workload.Address: field 3"},
		{"scope as bytes", str(3, "x"), true, "istio.security.Authorization.scope: wire type 2, want 0"},
		{"ports as fixed32", wrap(5, wrap(1, wrap(2, protowire.AppendFixed32(tag(nil, 9, protowire.Fixed32Type), 1)))), true, "istio.security.Match.destination_ports: wire type 5, want 0 or 2 (packed)"},
		{"packed truncated", wrap(5, wrap(1, wrap(2, wrap(10, []byte{0x80})))), true, "istio.security.Match.not_destination_ports: packed element 0"},
		{"presence", wrap(5, wrap(1, wrap(2, wrap(3, wrap(4, []byte{0x80}))))), true, "istio.security.StringMatch.presence: google.protobuf.Empty: field tag"},
		{"cidr", wrap(5, wrap(1, wrap(2, wrap(5, str(1, ""))[:3]))), true, "istio.security.Match.source_ips"},
	}
	for _, tt := range tests {
		var err error
		if tt.authz {
			_, err = apiwire.DecodeAuthorization(tt.b)
		} else {
			_, _, err = apiwire.DecodeAddress(tt.b)
		}
		if !errors.Is(err, apiwire.ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got error %v, want ErrMalformed and %q", tt.name, err, tt.want)
		}
	}
}

// TestSkipsUnknownFields: fields added by a newer control plane are skipped.
func TestSkipsUnknownFields(t *testing.T) {
	b := marshal(t, &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "u"}}})
	b = protowire.AppendVarint(protowire.AppendTag(b, 99, protowire.VarintType), 1)
	b = protowire.AppendFixed64(protowire.AppendTag(b, 98, protowire.Fixed64Type), 1)
	inner := protowire.AppendString(protowire.AppendTag(nil, 100, protowire.BytesType), "new")
	inner = protowire.AppendTag(inner, 101, protowire.StartGroupType)
	inner = protowire.AppendTag(inner, 101, protowire.EndGroupType)
	b = protowire.AppendBytes(protowire.AppendTag(b, 1, protowire.BytesType), inner)
	w, _, err := apiwire.DecodeAddress(b)
	if err != nil || w == nil || w.UID != "u" {
		t.Errorf("got %+v, %v; want uid u", w, err)
	}
	compareAddress(t, b, true)
}

// TestGatewayAddressJSON checks that the JSON form is what encoding/json writes for the
// generated type, which the config dump served.
func TestGatewayAddressJSON(t *testing.T) {
	length := uint32(0)
	for _, g := range []*workload.GatewayAddress{hostWaypoint(), ipWaypoint(nil), ipWaypoint(&length), {}, {HboneMtlsPort: 1}} {
		want, err := json.Marshal(g)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(wantGateway(g))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

// TestAuthorizationJSON checks that the JSON form is protojson's, as the config dump served
// it (compared as JSON values: protojson varies its whitespace on purpose).
func TestAuthorizationJSON(t *testing.T) {
	full := fullAuthorization()
	full.Extensions = nil // skipped by apiwire; protojson cannot write an unresolved Any
	full.Rules[0].Clauses[0].Matches[0].Extensions = nil
	for _, a := range []*security.Authorization{full, {}, {Name: "<&>", Scope: security.Scope(9), Action: security.Action_ALLOW}} {
		pj, err := protojson.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(wantAuthorization(a))
		if err != nil {
			t.Fatal(err)
		}
		var gv, wv any
		if err := json.Unmarshal(pj, &wv); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(got, &gv); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(gv, wv) {
			t.Errorf("got %s, want %s", got, pj)
		}
		// The same keys in the same order, which protojson takes from the .proto.
		if gk, wk := jsonKeys(got), jsonKeys(pj); gk != wk {
			t.Errorf("got keys %s, want %s", gk, wk)
		}
	}
}

// jsonKeys lists the object keys of a JSON text in order of appearance.
func jsonKeys(b []byte) string {
	dec := json.NewDecoder(bytes.NewReader(b))
	var keys []string
	var inObject []bool
	expectKey := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return strings.Join(keys, ",")
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				inObject = append(inObject, true)
				expectKey = true
				continue
			case '[':
				inObject = append(inObject, false)
			case '}', ']':
				inObject = inObject[:len(inObject)-1]
			}
		case string:
			if expectKey {
				keys = append(keys, v)
				expectKey = false
				continue
			}
		}
		expectKey = len(inObject) > 0 && inObject[len(inObject)-1]
	}
}

func TestAppendStruct(t *testing.T) {
	for _, fields := range []map[string]string{
		{"NODE_NAME": "n1", "NAMESPACE": "istio-system", "NAME": "ztunnel-abc", "empty": ""},
		{},
	} {
		want := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range fields {
			want.Fields[k] = structpb.NewStringValue(v)
		}
		wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got := apiwire.AppendStruct(nil, fields)
		if !bytes.Equal(got, wantBytes) {
			t.Errorf("got %x, want %x (deterministic protobuf)", got, wantBytes)
		}
		var back structpb.Struct
		if err := proto.Unmarshal(got, &back); err != nil || !proto.Equal(&back, want) {
			t.Errorf("decoded as %v, %v; want %v", &back, err, want)
		}
	}
}

// TestEnumNames: every value has the generated enum's name, and a value without one prints
// as its number, as the generated String does.
func TestEnumNames(t *testing.T) {
	check := func(name string, generated map[int32]string, got func(int32) string, want func(int32) string) {
		for v := range generated {
			if got(v) != want(v) {
				t.Errorf("%s %d: got %q, want %q", name, v, got(v), want(v))
			}
		}
		for _, v := range []int32{-1, int32(len(generated)), 99} {
			if got(v) != want(v) {
				t.Errorf("%s %d: got %q, want %q", name, v, got(v), want(v))
			}
		}
	}
	check("TunnelProtocol", workload.TunnelProtocol_name, func(v int32) string { return apiwire.TunnelProtocol(v).String() },
		func(v int32) string { return workload.TunnelProtocol(v).String() })
	check("WorkloadStatus", workload.WorkloadStatus_name, func(v int32) string { return apiwire.WorkloadStatus(v).String() },
		func(v int32) string { return workload.WorkloadStatus(v).String() })
	check("WorkloadType", workload.WorkloadType_name, func(v int32) string { return apiwire.WorkloadType(v).String() },
		func(v int32) string { return workload.WorkloadType(v).String() })
	check("AppProtocol", workload.AppProtocol_name, func(v int32) string { return apiwire.AppProtocol(v).String() },
		func(v int32) string { return workload.AppProtocol(v).String() })
	check("Scope", security.Scope_name, func(v int32) string { return apiwire.Scope(v).String() },
		func(v int32) string { return security.Scope(v).String() })
	check("Action", security.Action_name, func(v int32) string { return apiwire.Action(v).String() },
		func(v int32) string { return security.Action(v).String() })
	for v := range security.Scope_name {
		if !apiwire.Scope(v).Known() {
			t.Errorf("Scope %d: not Known", v)
		}
	}
	for v := range security.Action_name {
		if !apiwire.Action(v).Known() {
			t.Errorf("Action %d: not Known", v)
		}
	}
	if apiwire.Scope(3).Known() || apiwire.Action(-1).Known() {
		t.Error("values without a name are Known")
	}
}
