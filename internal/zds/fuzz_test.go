package zds

import (
	"testing"

	"google.golang.org/protobuf/proto"

	zdspb "github.com/ambit-mesh/ambit/api/zds"
)

func FuzzDecode(f *testing.F) {
	for _, m := range []proto.Message{
		&zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{Uid: "u", WorkloadInfo: &zdspb.WorkloadInfo{Name: "n", Namespace: "ns", ServiceAccount: "sa"}}}},
		&zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Keep{Keep: &zdspb.KeepWorkload{Uid: "u"}}},
		&zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Del{Del: &zdspb.DelWorkload{Uid: "u"}}},
		&zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_SnapshotSent{SnapshotSent: &zdspb.SnapshotSent{}}},
		&zdspb.WorkloadResponse{Payload: &zdspb.WorkloadResponse_Ack{Ack: &zdspb.Ack{Error: "e"}}},
		&zdspb.ZdsHello{Version: zdspb.Version_V1},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if req, err := DecodeRequest(b); err == nil {
			// Whatever decodes must encode and decode again to the same request.
			out, err := proto.Marshal(req)
			if err != nil {
				t.Fatalf("re-encoding %v: %v", req, err)
			}
			again, err := DecodeRequest(out)
			if err != nil || !proto.Equal(req, again) {
				t.Fatalf("round trip of %v = %v, %v", req, again, err)
			}
		}
		DecodeResponse(b)
		DecodeHello(b)
	})
}
