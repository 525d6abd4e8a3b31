package zds

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	zdspb "github.com/ambit-mesh/ambit/api/zds"
)

// fromPB restates a generated WorkloadRequest as a Request.
func fromPB(m *zdspb.WorkloadRequest) *Request {
	switch p := m.GetPayload().(type) {
	case *zdspb.WorkloadRequest_Add:
		r := &Request{Kind: RequestAdd, UID: p.Add.GetUid()}
		if i := p.Add.GetWorkloadInfo(); i != nil {
			r.Info = &WorkloadInfo{Name: i.GetName(), Namespace: i.GetNamespace(), ServiceAccount: i.GetServiceAccount()}
		}
		return r
	case *zdspb.WorkloadRequest_Keep:
		return &Request{Kind: RequestKeep, UID: p.Keep.GetUid()}
	case *zdspb.WorkloadRequest_Del:
		return &Request{Kind: RequestDel, UID: p.Del.GetUid()}
	case *zdspb.WorkloadRequest_SnapshotSent:
		return &Request{Kind: RequestSnapshotSent}
	}
	return &Request{}
}

func sameRequest(a, b *Request) bool {
	if a.Kind != b.Kind || a.UID != b.UID || (a.Info == nil) != (b.Info == nil) {
		return false
	}
	return a.Info == nil || *a.Info == *b.Info
}

var pbRequests = []*zdspb.WorkloadRequest{
	{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{Uid: "0b1e-uid", WorkloadInfo: &zdspb.WorkloadInfo{Name: "web-0", Namespace: "shop", ServiceAccount: "web"}}}},
	{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{Uid: "u", WorkloadInfo: &zdspb.WorkloadInfo{}}}},
	{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{Uid: "u"}}},
	{Payload: &zdspb.WorkloadRequest_Keep{Keep: &zdspb.KeepWorkload{Uid: "u"}}},
	{Payload: &zdspb.WorkloadRequest_Del{Del: &zdspb.DelWorkload{Uid: "u"}}},
	{Payload: &zdspb.WorkloadRequest_SnapshotSent{SnapshotSent: &zdspb.SnapshotSent{}}},
}

// TestRequestWire checks both directions against api/zds's generated type: the same bytes
// when encoding, the same message when decoding.
func TestRequestWire(t *testing.T) {
	for _, m := range pbRequests {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := fromPB(m).Marshal(); !bytes.Equal(got, want) {
			t.Errorf("%v: encoded %x, want %x", m, got, want)
		}
		got, err := DecodeRequest(want)
		if err != nil || !sameRequest(got, fromPB(m)) {
			t.Errorf("%v: decoded %+v, %v", m, got, err)
		}
	}
}

func TestResponseAndHelloWire(t *testing.T) {
	for _, text := range []string{"", "no netns"} {
		want, _ := proto.Marshal(&zdspb.WorkloadResponse{Payload: &zdspb.WorkloadResponse_Ack{Ack: &zdspb.Ack{Error: text}}})
		if got := marshalAck(text); !bytes.Equal(got, want) {
			t.Errorf("ack %q: encoded %x, want %x", text, got, want)
		}
		if got, err := DecodeResponse(want); err != nil || got != text {
			t.Errorf("ack %q: decoded %q, %v", text, got, err)
		}
	}
	want, _ := proto.Marshal(&zdspb.ZdsHello{Version: zdspb.Version_V1})
	if got := marshalHello(); !bytes.Equal(got, want) {
		t.Errorf("hello: encoded %x, want %x", got, want)
	}
	if err := DecodeHello(want); err != nil {
		t.Errorf("hello: %v", err)
	}
	// A wider varint is truncated to int32, as for the generated enum.
	if err := DecodeHello(protowire.AppendVarint([]byte{0x08}, 1<<32|1)); err != nil {
		t.Errorf("hello V1 as a 64-bit varint: %v", err)
	}
}

// TestRequestMerges: a payload repeated merges, another payload replaces it, as protobuf does.
func TestRequestMerges(t *testing.T) {
	cat := func(ms ...*zdspb.WorkloadRequest) []byte {
		var b []byte
		for _, m := range ms {
			mb, _ := proto.Marshal(m)
			b = append(b, mb...)
		}
		return b
	}
	for i, b := range [][]byte{
		cat(pbRequests[0], pbRequests[3]),
		cat(pbRequests[3], pbRequests[0]),
		cat(pbRequests[2], &zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{WorkloadInfo: &zdspb.WorkloadInfo{Name: "n"}}}},
			&zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{WorkloadInfo: &zdspb.WorkloadInfo{Namespace: "ns"}}}}),
		cat(pbRequests[4], pbRequests[5], pbRequests[4]),
	} {
		var ref zdspb.WorkloadRequest
		if err := proto.Unmarshal(b, &ref); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(b)
		if err != nil || !sameRequest(got, fromPB(&ref)) {
			t.Errorf("%d: decoded %+v, %v; generated %v", i, got, err, &ref)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	msg := func(num protowire.Number, b []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
	}
	for _, tt := range []struct {
		name, want string
		decode     func() error
	}{
		{"uid as varint", "KeepWorkload.uid: wire type 0, want 2", func() error {
			_, err := DecodeRequest(msg(5, protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)))
			return err
		}},
		{"add as varint", "WorkloadRequest.AddWorkload: wire type 0", func() error {
			_, err := DecodeRequest(protowire.AppendVarint([]byte{0x08}, 1))
			return err
		}},
		{"bad UTF-8", "WorkloadInfo.namespace: invalid UTF-8", func() error {
			_, err := DecodeRequest(msg(1, append(str(1, "u"), msg(2, str(2, "\xff"))...)))
			return err
		}},
		{"truncated", "WorkloadRequest.AddWorkload: unexpected EOF", func() error {
			_, err := DecodeRequest([]byte{0x0a, 0x05, 0x0a})
			return err
		}},
		{"only unknown", "without a known payload", func() error {
			_, err := DecodeRequest(str(9, "x"))
			return err
		}},
		{"ack error as varint", "Ack.error: wire type 0", func() error {
			_, err := DecodeResponse(msg(1, []byte{0x08, 0x01}))
			return err
		}},
		{"no ack", "without an Ack", func() error {
			_, err := DecodeResponse(nil)
			return err
		}},
		{"hello as bytes", "ZdsHello.version: wire type 2", func() error { return DecodeHello(str(1, "x")) }},
		{"hello not V1", "version 7; expected V1", func() error { return DecodeHello([]byte{0x08, 0x07}) }},
		{"no hello version", "version NOT_USED", func() error { return DecodeHello(nil) }},
	} {
		err := tt.decode()
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want ErrMalformed and %q", tt.name, err, tt.want)
		}
	}
}
