package discovery_test

import (
	"context"
	"maps"
	"net"
	"slices"
	"testing"
	"time"

	envoycore "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	envoy "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/api/discovery"
)

// These tests decode our messages' bytes as Envoy's generated types (go-control-plane, which
// istiod-lite serves with) and the other way round, field by field. Tests may link
// go-control-plane; the api/discovery package itself must not.

const addressType = "type.googleapis.com/istio.workload.Address"

// reencode marshals from and unmarshals the bytes into to.
func reencode(t *testing.T, from, to proto.Message) {
	t.Helper()
	b, err := proto.Marshal(from)
	if err != nil {
		t.Fatalf("marshal %s: %v", from.ProtoReflect().Descriptor().FullName(), err)
	}
	if err := proto.Unmarshal(b, to); err != nil {
		t.Fatalf("unmarshal %s as %s: %v", from.ProtoReflect().Descriptor().FullName(), to.ProtoReflect().Descriptor().FullName(), err)
	}
}

func metadata(t *testing.T) *structpb.Struct {
	t.Helper()
	m, err := structpb.NewStruct(map[string]any{"NODE_NAME": "node-1", "NAMESPACE": "istio-system", "NAME": "ztunnel-abc"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// body is a resource body: bytes neither side looks inside.
func body() *anypb.Any {
	return &anypb.Any{TypeUrl: addressType, Value: []byte{0x0a, 0x02, 0xa2, 0x01}}
}

type fieldCheck struct {
	field     string
	got, want any
}

func checkFields(t *testing.T, checks []fieldCheck) {
	t.Helper()
	for _, c := range checks {
		var same bool
		switch want := c.want.(type) {
		case proto.Message:
			same = proto.Equal(c.got.(proto.Message), want)
		case []string:
			same = slices.Equal(c.got.([]string), want)
		case map[string]string:
			same = maps.Equal(c.got.(map[string]string), want)
		default:
			same = c.got == c.want
		}
		if !same {
			t.Errorf("%s: got %v, want %v", c.field, c.got, c.want)
		}
	}
}

// noUnknown fails if m holds fields its type does not declare: everything we send must be a
// field Envoy knows.
func noUnknown(t *testing.T, m proto.Message) {
	t.Helper()
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if u := m.GetUnknown(); len(u) > 0 {
			t.Errorf("%s: unknown fields %x", m.Descriptor().FullName(), u)
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap() || fd.Message() == nil:
			case fd.IsList():
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			default:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
}

func TestRequestToEnvoy(t *testing.T) {
	ours := &discovery.DeltaDiscoveryRequest{
		Node:                     &discovery.Node{Id: "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local", Metadata: metadata(t)},
		TypeUrl:                  addressType,
		ResourceNamesSubscribe:   []string{"*", "default/reviews.default.svc.cluster.local"},
		ResourceNamesUnsubscribe: []string{"ambit.ztunnel/sync-probe/1"},
		InitialResourceVersions:  map[string]string{"Kubernetes//Pod/default/reviews-v1": "3", "default/reviews.default.svc.cluster.local": "9"},
		ResponseNonce:            "n7",
		ErrorDetail:              &discovery.Status{Code: 3, Message: "refused 1 resource(s)"},
	}
	var got envoy.DeltaDiscoveryRequest
	reencode(t, ours, &got)
	noUnknown(t, &got)
	checkFields(t, requestChecks(&got, ours))
}

// requestChecks compares every field ztunnel carries of Envoy's request e and ours o, with o's
// values as the ones wanted.
func requestChecks(e *envoy.DeltaDiscoveryRequest, o *discovery.DeltaDiscoveryRequest) []fieldCheck {
	return []fieldCheck{
		{"node.id", e.GetNode().GetId(), o.GetNode().GetId()},
		{"node.metadata", e.GetNode().GetMetadata(), o.GetNode().GetMetadata()},
		{"type_url", e.GetTypeUrl(), o.GetTypeUrl()},
		{"resource_names_subscribe", e.GetResourceNamesSubscribe(), o.GetResourceNamesSubscribe()},
		{"resource_names_unsubscribe", e.GetResourceNamesUnsubscribe(), o.GetResourceNamesUnsubscribe()},
		{"initial_resource_versions", e.GetInitialResourceVersions(), o.GetInitialResourceVersions()},
		{"response_nonce", e.GetResponseNonce(), o.GetResponseNonce()},
		{"error_detail.code", e.GetErrorDetail().GetCode(), o.GetErrorDetail().GetCode()},
		{"error_detail.message", e.GetErrorDetail().GetMessage(), o.GetErrorDetail().GetMessage()},
	}
}

func TestRequestFromEnvoy(t *testing.T) {
	// Fields ztunnel does not carry are set too: they must survive as unknown fields.
	theirs := &envoy.DeltaDiscoveryRequest{
		Node: &envoycore.Node{
			Id:             "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
			Cluster:        "ztunnel",
			Metadata:       metadata(t),
			UserAgentName:  "ztunnel",
			ClientFeatures: []string{"envoy.lb.does_not_support_overprovisioning"},
		},
		TypeUrl:                   addressType,
		ResourceNamesSubscribe:    []string{"*"},
		ResourceNamesUnsubscribe:  []string{"x"},
		ResourceLocatorsSubscribe: []*envoy.ResourceLocator{{Name: "y"}},
		InitialResourceVersions:   map[string]string{"a": "1"},
		ResponseNonce:             "n1",
		ErrorDetail:               &rpcstatus.Status{Code: 13, Message: "internal", Details: []*anypb.Any{body()}},
	}
	var ours discovery.DeltaDiscoveryRequest
	reencode(t, theirs, &ours)
	// The comparison is an equality: which side is "got" only changes the message.
	checkFields(t, requestChecks(theirs, &ours))
	var back envoy.DeltaDiscoveryRequest
	reencode(t, &ours, &back)
	if !proto.Equal(&back, theirs) {
		t.Errorf("Envoy -> ours -> Envoy changed the request:\ngot  %v\nwant %v", &back, theirs)
	}
}

func TestResponseFromEnvoy(t *testing.T) {
	theirs := &envoy.DeltaDiscoveryResponse{
		SystemVersionInfo: "v12",
		Resources: []*envoy.Resource{
			{
				Name: "Kubernetes//Pod/default/reviews-v1", Version: "3", Resource: body(), Aliases: []string{"/10.244.1.7"},
				Ttl: durationpb.New(time.Minute), CacheControl: &envoy.Resource_CacheControl{DoNotCache: true},
			},
			{Name: "default/reviews.default.svc.cluster.local", Version: "9", Resource: body()},
		},
		TypeUrl:          addressType,
		Nonce:            "n8",
		RemovedResources: []string{"Kubernetes//Pod/default/reviews-v2", "ambit.ztunnel/sync-probe/1"},
		ControlPlane:     &envoycore.ControlPlane{Identifier: "istiod-lite"},
	}
	var ours discovery.DeltaDiscoveryResponse
	reencode(t, theirs, &ours)
	checks := []fieldCheck{
		{"type_url", ours.GetTypeUrl(), theirs.GetTypeUrl()},
		{"nonce", ours.GetNonce(), theirs.GetNonce()},
		{"removed_resources", ours.GetRemovedResources(), theirs.GetRemovedResources()},
		{"len(resources)", len(ours.GetResources()), len(theirs.GetResources())},
	}
	for i, r := range ours.GetResources() {
		want := theirs.GetResources()[i]
		checks = append(checks,
			fieldCheck{"resources.name", r.GetName(), want.GetName()},
			fieldCheck{"resources.version", r.GetVersion(), want.GetVersion()},
			fieldCheck{"resources.resource", r.GetResource(), want.GetResource()},
			fieldCheck{"resources.aliases", r.GetAliases(), want.GetAliases()},
		)
	}
	checkFields(t, checks)
	var back envoy.DeltaDiscoveryResponse
	reencode(t, &ours, &back)
	if !proto.Equal(&back, theirs) {
		t.Errorf("Envoy -> ours -> Envoy changed the response:\ngot  %v\nwant %v", &back, theirs)
	}
}

func TestResponseToEnvoy(t *testing.T) {
	ours := &discovery.DeltaDiscoveryResponse{
		Resources:        []*discovery.Resource{{Version: "3", Resource: body(), Name: "w", Aliases: []string{"/10.244.1.7", "net1/10.244.1.7"}}},
		TypeUrl:          addressType,
		Nonce:            "n9",
		RemovedResources: []string{"gone"},
	}
	var got envoy.DeltaDiscoveryResponse
	reencode(t, ours, &got)
	noUnknown(t, &got)
	checkFields(t, []fieldCheck{
		{"type_url", got.GetTypeUrl(), ours.GetTypeUrl()},
		{"nonce", got.GetNonce(), ours.GetNonce()},
		{"removed_resources", got.GetRemovedResources(), ours.GetRemovedResources()},
		{"len(resources)", len(got.GetResources()), 1},
		{"resources.name", got.GetResources()[0].GetName(), "w"},
		{"resources.version", got.GetResources()[0].GetVersion(), "3"},
		{"resources.resource", got.GetResources()[0].GetResource(), body()},
		{"resources.aliases", got.GetResources()[0].GetAliases(), ours.GetResources()[0].GetAliases()},
	})
}

// TestDescriptorsMatchEnvoy compares each of our fields with Envoy's field of the same number,
// and checks that we reserve only numbers Envoy uses or reserves.
func TestDescriptorsMatchEnvoy(t *testing.T) {
	// Our message -> the Envoy (or well-known) message it mirrors.
	pairs := map[protoreflect.FullName]protoreflect.MessageDescriptor{
		"ambit.discovery.v3.DeltaDiscoveryRequest":  (&envoy.DeltaDiscoveryRequest{}).ProtoReflect().Descriptor(),
		"ambit.discovery.v3.DeltaDiscoveryResponse": (&envoy.DeltaDiscoveryResponse{}).ProtoReflect().Descriptor(),
		"ambit.discovery.v3.Resource":               (&envoy.Resource{}).ProtoReflect().Descriptor(),
		"ambit.discovery.v3.Node":                   (&envoycore.Node{}).ProtoReflect().Descriptor(),
		"ambit.discovery.v3.Status":                 (&rpcstatus.Status{}).ProtoReflect().Descriptor(),
	}
	mirrors := func(ours, theirs protoreflect.MessageDescriptor) bool {
		if p, ok := pairs[ours.FullName()]; ok {
			return p.FullName() == theirs.FullName()
		}
		return ours.FullName() == theirs.FullName() // well-known types: Any, Struct
	}
	for _, m := range []proto.Message{
		&discovery.DeltaDiscoveryRequest{}, &discovery.DeltaDiscoveryResponse{}, &discovery.Resource{},
		&discovery.Node{}, &discovery.Status{},
	} {
		ours := m.ProtoReflect().Descriptor()
		theirs := pairs[ours.FullName()]
		if theirs == nil {
			t.Errorf("%s: no Envoy message to compare with", ours.FullName())
			continue
		}
		for i := range ours.Fields().Len() {
			f := ours.Fields().Get(i)
			e := theirs.Fields().ByNumber(f.Number())
			if e == nil {
				t.Errorf("%s.%s: %s has no field %d", ours.FullName(), f.Name(), theirs.FullName(), f.Number())
				continue
			}
			if f.Name() != e.Name() || f.Kind() != e.Kind() || f.Cardinality() != e.Cardinality() || f.IsMap() != e.IsMap() {
				t.Errorf("%s field %d: got %s %v %v (map %v), Envoy has %s %v %v (map %v)", ours.FullName(), f.Number(),
					f.Name(), f.Cardinality(), f.Kind(), f.IsMap(), e.Name(), e.Cardinality(), e.Kind(), e.IsMap())
			}
			if f.IsMap() {
				if f.MapKey().Kind() != e.MapKey().Kind() || f.MapValue().Kind() != e.MapValue().Kind() {
					t.Errorf("%s.%s: map types differ from Envoy's", ours.FullName(), f.Name())
				}
			} else if f.Message() != nil && !mirrors(f.Message(), e.Message()) {
				t.Errorf("%s.%s: got type %s, Envoy has %s", ours.FullName(), f.Name(), f.Message().FullName(), e.Message().FullName())
			}
		}
		reserved := ours.ReservedRanges()
		for i := range reserved.Len() {
			r := reserved.Get(i)
			for n := r[0]; n < r[1]; n++ {
				if theirs.Fields().ByNumber(n) == nil && !theirs.ReservedRanges().Has(n) {
					t.Errorf("%s reserves %d, which %s neither uses nor reserves", ours.FullName(), n, theirs.FullName())
				}
			}
		}
	}
}

// adsServer is Envoy's generated delta ADS service: it answers the first request with one
// response naming the node that asked.
type adsServer struct {
	envoy.UnimplementedAggregatedDiscoveryServiceServer
}

func (adsServer) DeltaAggregatedResources(s grpc.BidiStreamingServer[envoy.DeltaDiscoveryRequest, envoy.DeltaDiscoveryResponse]) error {
	req, err := s.Recv()
	if err != nil {
		return err
	}
	return s.Send(&envoy.DeltaDiscoveryResponse{
		TypeUrl:   req.GetTypeUrl(),
		Nonce:     "1",
		Resources: []*envoy.Resource{{Name: req.GetNode().GetId(), Version: "1"}},
	})
}

// TestDeltaADSExchange runs one exchange with Envoy's generated server over loopback gRPC: the
// method path and both message types meet.
func TestDeltaADSExchange(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	envoy.RegisterAggregatedDiscoveryServiceServer(srv, adsServer{})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, discovery.DeltaAggregatedResourcesMethod)
	if err != nil {
		t.Fatalf("opening the stream: %v", err)
	}
	s := &grpc.GenericClientStream[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]{ClientStream: cs}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &discovery.Node{Id: "ztunnel~1"}, TypeUrl: addressType}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if got := resp.GetResources(); resp.GetTypeUrl() != addressType || len(got) != 1 || got[0].GetName() != "ztunnel~1" {
		t.Errorf("got response %v, want type %s with one resource named ztunnel~1", resp, addressType)
	}
}
