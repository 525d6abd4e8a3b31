package apiwire_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/api/discovery"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// TestDeltaRequestMarshal decodes what Marshal writes with the generated type.
func TestDeltaRequestMarshal(t *testing.T) {
	tests := []struct {
		in   apiwire.DeltaRequest
		want *discovery.DeltaDiscoveryRequest
	}{
		{
			apiwire.DeltaRequest{
				Node:                     &apiwire.Node{ID: "ztunnel~10.0.0.9~z.istio-system~istio-system.svc.cluster.local", Metadata: map[string]string{"NODE_NAME": "n1", "NAME": "z"}},
				TypeURL:                  "type.googleapis.com/istio.workload.Address",
				ResourceNamesSubscribe:   []string{"*", "shop/web.shop.svc.cluster.local", ""},
				ResourceNamesUnsubscribe: []string{"gone"},
				InitialResourceVersions:  map[string]string{"Kubernetes//Pod/shop/web-0": "7", "b": "", "": "x"},
				ResponseNonce:            "n1",
				ErrorDetail:              &apiwire.Status{Code: 3, Message: "refused 1 resource(s)"},
			},
			&discovery.DeltaDiscoveryRequest{
				Node: &discovery.Node{Id: "ztunnel~10.0.0.9~z.istio-system~istio-system.svc.cluster.local", Metadata: &structpb.Struct{
					Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue("n1"), "NAME": structpb.NewStringValue("z")},
				}},
				TypeUrl:                  "type.googleapis.com/istio.workload.Address",
				ResourceNamesSubscribe:   []string{"*", "shop/web.shop.svc.cluster.local", ""},
				ResourceNamesUnsubscribe: []string{"gone"},
				InitialResourceVersions:  map[string]string{"Kubernetes//Pod/shop/web-0": "7", "b": "", "": "x"},
				ResponseNonce:            "n1",
				ErrorDetail:              &discovery.Status{Code: 3, Message: "refused 1 resource(s)"},
			},
		},
		{apiwire.DeltaRequest{}, &discovery.DeltaDiscoveryRequest{}},
		{
			apiwire.DeltaRequest{Node: &apiwire.Node{Metadata: map[string]string{}}, ErrorDetail: &apiwire.Status{Code: -1}},
			&discovery.DeltaDiscoveryRequest{Node: &discovery.Node{Metadata: &structpb.Struct{}}, ErrorDetail: &discovery.Status{Code: -1}},
		},
		{apiwire.DeltaRequest{Node: &apiwire.Node{}, ErrorDetail: &apiwire.Status{}}, &discovery.DeltaDiscoveryRequest{Node: &discovery.Node{}, ErrorDetail: &discovery.Status{}}},
	}
	for i, tt := range tests {
		b := tt.in.Marshal()
		var got discovery.DeltaDiscoveryRequest
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("%d: unmarshal: %v", i, err)
		}
		if !proto.Equal(&got, tt.want) {
			t.Errorf("%d: got %v, want %v", i, &got, tt.want)
		}
		// Maps sorted by key, fields in number order: the deterministic encoding.
		if want, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(tt.want); string(b) != string(want) {
			t.Errorf("%d: got bytes %x, want %x", i, b, want)
		}
	}
}

func deltaResponse(t testing.TB) *discovery.DeltaDiscoveryResponse {
	body, err := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: fullWorkload()}})
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.DeltaDiscoveryResponse{
		Resources: []*discovery.Resource{
			{Version: "7", Resource: body, Name: "Kubernetes//Pod/shop/web-0", Aliases: []string{"net1/10.244.1.7", "x"}},
			{Name: "no body"},
			{Resource: &anypb.Any{}},
		},
		TypeUrl:          "type.googleapis.com/istio.workload.Address",
		Nonce:            "n2",
		RemovedResources: []string{"Kubernetes//Pod/shop/web-1", ""},
	}
}

func TestDecodeDeltaResponse(t *testing.T) {
	b := marshal(t, deltaResponse(t))
	compareDeltaResponse(t, b, true)
	compareDeltaResponse(t, append(b, b...), true)
	if _, err := apiwire.DecodeDeltaResponse(b[:len(b)-4]); err == nil || !strings.Contains(err.Error(), "ambit.discovery.v3.DeltaDiscoveryResponse.") {
		t.Errorf("truncated: got %v, want an error naming the field", err)
	}
}

func compareDeltaResponse(t testing.TB, b []byte, mustAccept bool) {
	t.Helper()
	got, err := apiwire.DecodeDeltaResponse(b)
	var ref discovery.DeltaDiscoveryResponse
	refErr := proto.Unmarshal(b, &ref)
	if mustAccept && (err != nil || refErr != nil) {
		t.Fatalf("apiwire: %v; generated: %v", err, refErr)
	}
	if err != nil || refErr != nil {
		return
	}
	want := &apiwire.DeltaResponse{TypeURL: ref.GetTypeUrl(), Nonce: ref.GetNonce(), RemovedResources: ref.GetRemovedResources()}
	for _, r := range ref.GetResources() {
		res := apiwire.Resource{Version: r.GetVersion(), Name: r.GetName(), Aliases: r.GetAliases()}
		if a := r.GetResource(); a != nil {
			res.Body = &apiwire.Any{TypeURL: a.GetTypeUrl(), Value: a.GetValue()}
		}
		want.Resources = append(want.Resources, res)
	}
	if d := diff(got, want); d != "" {
		t.Errorf("response%s", d)
	}
}

// FuzzDecodeDeltaResponse compares DecodeDeltaResponse with the generated decoder.
func FuzzDecodeDeltaResponse(f *testing.F) {
	f.Add(marshal(f, deltaResponse(f)))
	f.Add(marshal(f, &discovery.DeltaDiscoveryResponse{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		compareDeltaResponse(t, b, false)
	})
}
