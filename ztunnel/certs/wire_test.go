package certs

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/ambit-mesh/ambit/api/ca"
)

// TestRequestBytes checks the hand-written encoding against api/ca's generated type.
func TestRequestBytes(t *testing.T) {
	id := "spiffe://cluster.local/ns/a/sa/b"
	md := &structpb.Struct{Fields: map[string]*structpb.Value{ImpersonatedIdentityKey: structpb.NewStringValue(id)}}
	for _, tc := range []struct {
		name     string
		csr      string
		validity int64
		fields   map[string]string
		md       *structpb.Struct
	}{
		{"own", "-----BEGIN CERTIFICATE REQUEST-----\n...", 86400, nil, nil},
		{"impersonated", "csr", 1, map[string]string{ImpersonatedIdentityKey: id}, md},
		{"empty metadata", "csr", 1, map[string]string{}, &structpb.Struct{}},
		{"empty", "", 0, nil, nil},
	} {
		got := marshalRequest(tc.csr, tc.validity, tc.fields)
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.IstioCertificateRequest{Csr: tc.csr, ValidityDuration: tc.validity, Metadata: tc.md})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: got %x, want %x (api/ca's encoding)", tc.name, got, want)
		}
		var back pb.IstioCertificateRequest
		if err := proto.Unmarshal(got, &back); err != nil || back.GetCsr() != tc.csr || back.GetValidityDuration() != tc.validity || !proto.Equal(back.GetMetadata(), tc.md) {
			t.Errorf("%s: decoded as %v, %v", tc.name, &back, err)
		}
	}
}

func TestResponseBytes(t *testing.T) {
	want := []string{"leaf PEM", "", "root PEM"}
	b, err := proto.Marshal(&pb.IstioCertificateResponse{CertChain: want})
	if err != nil {
		t.Fatal(err)
	}
	// An unknown field, as a newer CA might send, is skipped.
	b = protowire.AppendVarint(protowire.AppendTag(b, 7, protowire.VarintType), 42)
	got, err := unmarshalResponse(b)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	for name, bad := range map[string][]byte{
		"truncated":  b[:3],
		"not-utf8":   protowire.AppendString(protowire.AppendTag(nil, respCertChain, protowire.BytesType), "\xff"),
		"bad-number": protowire.AppendVarint(protowire.AppendTag(nil, protowire.MaxValidNumber+1, protowire.VarintType), 1),
		"bad-tag":    {0x80},
	} {
		if _, err := unmarshalResponse(bad); !errors.Is(err, errMalformed) {
			t.Errorf("%s: got %v, want errMalformed", name, err)
		}
	}
}

// FuzzResponse checks the hand-written decoder against the generated one: both accept the
// same input with the same chain.
func FuzzResponse(f *testing.F) {
	b, _ := proto.Marshal(&pb.IstioCertificateResponse{CertChain: []string{"a", "bc"}})
	f.Add(b)
	f.Add([]byte{0x0a, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := unmarshalResponse(b)
		var m pb.IstioCertificateResponse
		werr := proto.Unmarshal(b, &m)
		if (err == nil) != (werr == nil) {
			t.Fatalf("ours: %v, generated: %v", err, werr)
		}
		if err == nil && !slices.Equal(got, m.GetCertChain()) && !(len(got) == 0 && len(m.GetCertChain()) == 0) {
			t.Fatalf("ours %q, generated %q", got, m.GetCertChain())
		}
	})
}
