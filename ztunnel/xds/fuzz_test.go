package xds

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/api/discovery"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// FuzzHandle feeds arbitrary responses, as a server could send them, through decoding,
// the Sink and the bookkeeping: nothing may panic, every response gets an ACK or NACK with its
// nonce, and a NACK names a reason.
func FuzzHandle(f *testing.F) {
	body, _ := anypb.New(&workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "w"}}})
	for _, r := range []*discovery.DeltaDiscoveryResponse{
		{TypeUrl: AddressType, Nonce: "1", Resources: []*discovery.Resource{{Name: "w", Version: "1", Resource: body, Aliases: []string{"/10.0.0.1"}}}},
		{TypeUrl: AddressType, Nonce: "2", RemovedResources: []string{"w", probePrefix + "1"}},
		{TypeUrl: AuthorizationType, Nonce: "3", Resources: []*discovery.Resource{{Name: "x", Resource: body}}},
		{TypeUrl: "type.googleapis.com/other", Nonce: "4"},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := apiwire.DecodeDeltaResponse(b)
		if err != nil {
			return
		}
		c, err := New(Config{Address: "127.0.0.1:1", Plaintext: true}, newSink())
		if err != nil {
			t.Fatal(err)
		}
		c.names["/10.0.0.1"] = &lookup{done: make(chan struct{})}
		for range 2 {
			ack := c.handle(resp)
			if ack.ResponseNonce != resp.Nonce || ack.TypeURL != resp.TypeURL {
				t.Fatalf("ack %+v for response %+v", ack, resp)
			}
			if ack.ErrorDetail != nil && ack.ErrorDetail.Message == "" {
				t.Fatal("NACK without a message")
			}
		}
	})
}
