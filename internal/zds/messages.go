package zds

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The ZDS messages (api/zds/zds.proto), encoded and decoded here with protowire rather than
// with api/zds's generated types, whose protobuf runtime ztunnel cannot afford (issue #4).
// Field numbers are the .proto's; the tests compare both directions with the generated types.
// Unknown fields are skipped; a field read here with another wire type, truncated input and
// invalid UTF-8 are errors (wrapping ErrMalformed) naming the field.

// WorkloadInfo identifies the pod of an AddWorkload (istio.workload.zds.WorkloadInfo).
type WorkloadInfo struct {
	Name           string // 1
	Namespace      string // 2
	ServiceAccount string // 3
}

// RequestKind is the payload of a WorkloadRequest, numbered as its oneof's fields.
type RequestKind int

// The RequestKind values.
const (
	RequestNone         RequestKind = 0 // no payload
	RequestAdd          RequestKind = 1 // AddWorkload
	RequestDel          RequestKind = 2 // DelWorkload
	RequestSnapshotSent RequestKind = 3 // SnapshotSent
	RequestKeep         RequestKind = 5 // KeepWorkload
)

// String names the payload's message.
func (k RequestKind) String() string {
	switch k {
	case RequestAdd:
		return "AddWorkload"
	case RequestDel:
		return "DelWorkload"
	case RequestSnapshotSent:
		return "SnapshotSent"
	case RequestKeep:
		return "KeepWorkload"
	}
	return fmt.Sprintf("RequestKind(%d)", int(k))
}

// Request is a WorkloadRequest, every message from the agent to ztunnel.
type Request struct {
	Kind RequestKind
	// UID is the pod's, for every Kind but RequestSnapshotSent.
	UID string
	// Info is AddWorkload's workload_info; nil when absent.
	Info *WorkloadInfo
}

// Field numbers of the messages below.
const (
	addUID, addInfo                 = 1, 2 // AddWorkload
	keepUID                         = 1    // KeepWorkload
	delUID                          = 2    // DelWorkload, 2 as upstream
	infoName, infoNS, infoSA        = 1, 2, 3
	helloVersion                    = 1 // ZdsHello
	responseAck, ackError           = 1, 1
	versionV1                uint64 = 1 // Version.V1
)

// Marshal encodes r as a WorkloadRequest, zero fields left out as proto3 does.
func (r *Request) Marshal() []byte {
	var p []byte
	switch r.Kind {
	case RequestAdd:
		p = appendString(p, addUID, r.UID)
		if r.Info != nil {
			var info []byte
			info = appendString(info, infoName, r.Info.Name)
			info = appendString(info, infoNS, r.Info.Namespace)
			info = appendString(info, infoSA, r.Info.ServiceAccount)
			p = appendMessage(p, addInfo, info)
		}
	case RequestKeep:
		p = appendString(p, keepUID, r.UID)
	case RequestDel:
		p = appendString(p, delUID, r.UID)
	case RequestSnapshotSent:
	default:
		return nil
	}
	return appendMessage(nil, protowire.Number(r.Kind), p)
}

// marshalHello encodes ztunnel's ZdsHello, version V1.
func marshalHello() []byte {
	b := protowire.AppendTag(nil, helloVersion, protowire.VarintType)
	return protowire.AppendVarint(b, versionV1)
}

// marshalAck encodes a WorkloadResponse carrying an Ack with errText ("" for success).
func marshalAck(errText string) []byte {
	return appendMessage(nil, responseAck, appendString(nil, ackError, errText))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// DecodeRequest parses and checks one message from the agent: a known payload, with a uid
// where the payload has one.
func DecodeRequest(b []byte) (*Request, error) {
	r := &Request{}
	err := fields("WorkloadRequest", b, func(f *field) error {
		kind := RequestKind(f.num)
		switch kind {
		case RequestAdd, RequestDel, RequestSnapshotSent, RequestKeep:
		default:
			return f.skip()
		}
		v, err := f.bytes(kind.String())
		if err != nil {
			return err
		}
		// A oneof member replaces another, and merges with a repeat of itself.
		if r.Kind != kind {
			*r = Request{Kind: kind}
		}
		return r.decodePayload(v)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: decoding %w", ErrMalformed, err)
	}
	switch r.Kind {
	case RequestAdd, RequestKeep, RequestDel:
		if r.UID == "" {
			return nil, fmt.Errorf("%w: %s without a uid", ErrMalformed, r.Kind)
		}
	case RequestNone:
		return nil, fmt.Errorf("%w: WorkloadRequest without a known payload", ErrMalformed)
	}
	return r, nil
}

func (r *Request) decodePayload(b []byte) error {
	uidField := protowire.Number(0) // no field has number 0
	switch r.Kind {
	case RequestAdd:
		uidField = addUID
	case RequestKeep:
		uidField = keepUID
	case RequestDel:
		uidField = delUID
	}
	return fields(r.Kind.String(), b, func(f *field) error {
		var err error
		switch {
		case f.num == uidField:
			r.UID, err = f.string("uid")
		case r.Kind == RequestAdd && f.num == addInfo:
			var v []byte
			if v, err = f.bytes("workload_info"); err != nil {
				return err
			}
			if r.Info == nil {
				r.Info = &WorkloadInfo{}
			}
			err = r.Info.decode(v)
		default:
			err = f.skip()
		}
		return err
	})
}

func (w *WorkloadInfo) decode(b []byte) error {
	return fields("WorkloadInfo", b, func(f *field) error {
		var err error
		switch f.num {
		case infoName:
			w.Name, err = f.string("name")
		case infoNS:
			w.Namespace, err = f.string("namespace")
		case infoSA:
			w.ServiceAccount, err = f.string("service_account")
		default:
			err = f.skip()
		}
		return err
	})
}

// DecodeResponse parses and checks one message from ztunnel after its hello, a
// WorkloadResponse, and returns its Ack's error text ("" for success).
func DecodeResponse(b []byte) (text string, err error) {
	hasAck := false
	err = fields("WorkloadResponse", b, func(f *field) error {
		if f.num != responseAck {
			return f.skip()
		}
		v, err := f.bytes("ack")
		if err != nil {
			return err
		}
		hasAck = true
		return fields("Ack", v, func(f *field) error {
			if f.num != ackError {
				return f.skip()
			}
			var err error
			text, err = f.string("error")
			return err
		})
	})
	if err != nil {
		return "", fmt.Errorf("%w: decoding %w", ErrMalformed, err)
	}
	if !hasAck {
		return "", fmt.Errorf("%w: WorkloadResponse without an Ack", ErrMalformed)
	}
	return text, nil
}

// DecodeHello parses and checks ztunnel's first message, a ZdsHello, which must say V1.
func DecodeHello(b []byte) error {
	var version uint64
	err := fields("ZdsHello", b, func(f *field) error {
		if f.num != helloVersion {
			return f.skip()
		}
		var err error
		version, err = f.varint("version")
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: decoding %w", ErrMalformed, err)
	}
	// An enum is an int32 on the wire: a wider varint is truncated.
	if v := int32(version); v != int32(versionV1) {
		name := "NOT_USED"
		if v != 0 {
			name = fmt.Sprint(v)
		}
		return fmt.Errorf("%w: ZdsHello version %s; expected V1", ErrMalformed, name)
	}
	return nil
}

// field is the current field of a message that fields walks.
type field struct {
	msg string
	num protowire.Number
	typ protowire.Type
	b   []byte // the rest of the message, from the field's value on
}

// fields calls f for each field of the message msg encoded in b; f consumes the value with one
// of field's methods.
func fields(msg string, b []byte, f func(*field) error) error {
	fd := &field{msg: msg, b: b}
	for len(fd.b) > 0 {
		num, typ, n := protowire.ConsumeTag(fd.b)
		if n < 0 {
			return fmt.Errorf("%s: field tag: %w", msg, protowire.ParseError(n))
		}
		fd.num, fd.typ, fd.b = num, typ, fd.b[n:]
		if err := f(fd); err != nil {
			return err
		}
	}
	return nil
}

func (f *field) skip() error {
	n := protowire.ConsumeFieldValue(f.num, f.typ, f.b)
	if n < 0 {
		return fmt.Errorf("%s: field %d: %w", f.msg, f.num, protowire.ParseError(n))
	}
	f.b = f.b[n:]
	return nil
}

func (f *field) bytes(name string) ([]byte, error) {
	if f.typ != protowire.BytesType {
		return nil, fmt.Errorf("%s.%s: wire type %d, want %d", f.msg, name, f.typ, protowire.BytesType)
	}
	v, n := protowire.ConsumeBytes(f.b)
	if n < 0 {
		return nil, fmt.Errorf("%s.%s: %w", f.msg, name, protowire.ParseError(n))
	}
	f.b = f.b[n:]
	return v, nil
}

func (f *field) string(name string) (string, error) {
	v, err := f.bytes(name)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(v) {
		return "", fmt.Errorf("%s.%s: invalid UTF-8", f.msg, name)
	}
	return string(v), nil
}

func (f *field) varint(name string) (uint64, error) {
	if f.typ != protowire.VarintType {
		return 0, fmt.Errorf("%s.%s: wire type %d, want %d", f.msg, name, f.typ, protowire.VarintType)
	}
	v, n := protowire.ConsumeVarint(f.b)
	if n < 0 {
		return 0, fmt.Errorf("%s.%s: %w", f.msg, name, protowire.ParseError(n))
	}
	f.b = f.b[n:]
	return v, nil
}
