package zds

import (
	"testing"

	"google.golang.org/protobuf/proto"

	zdspb "github.com/ambit-mesh/ambit/api/zds"
)

// FuzzDecode compares the decoders with api/zds's generated ones: what both accept must decode
// to the same message, and what decodes must encode back to bytes the generated decoder reads
// as the same message.
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
		req, err := DecodeRequest(b)
		var ref zdspb.WorkloadRequest
		if err == nil && proto.Unmarshal(b, &ref) == nil {
			if want := fromPB(&ref); !sameRequest(req, want) {
				t.Fatalf("decoded %+v, generated %+v", req, want)
			}
		}
		if err == nil {
			var back zdspb.WorkloadRequest
			if err := proto.Unmarshal(req.Marshal(), &back); err != nil || !sameRequest(fromPB(&back), req) {
				t.Fatalf("re-encoding %+v: decoded as %v, %v", req, &back, err)
			}
		}
		ack, err := DecodeResponse(b)
		var refResp zdspb.WorkloadResponse
		if err == nil && proto.Unmarshal(b, &refResp) == nil && ack != refResp.GetAck().GetError() {
			t.Fatalf("ack %q, generated %q", ack, refResp.GetAck().GetError())
		}
		err = DecodeHello(b)
		var hello zdspb.ZdsHello
		// Where both decode, they must agree on whether it says V1.
		if _, derr := helloVersionOf(b); derr == nil && proto.Unmarshal(b, &hello) == nil &&
			(err == nil) != (hello.GetVersion() == zdspb.Version_V1) {
			t.Fatalf("DecodeHello: %v; generated version %v", err, hello.GetVersion())
		}
	})
}

// helloVersionOf is DecodeHello's decoding without its V1 check.
func helloVersionOf(b []byte) (uint64, error) {
	var v uint64
	return v, fields("ZdsHello", b, func(f *field) error {
		if f.num != helloVersion {
			return f.skip()
		}
		var err error
		v, err = f.varint("version")
		return err
	})
}
