package apiwire

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed is wrapped by every decoding error: input that is not a well-formed message of
// the type asked for. The error names the field, with the path of messages that holds it:
// "istio.workload.Address.workload: istio.workload.Workload.uid: invalid UTF-8".
var ErrMalformed = errors.New("malformed protobuf message")

// malformed wraps an error of the decoders below in ErrMalformed, once, at the top.
func malformed(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrMalformed, err)
}

// decoder walks the fields of one message. msg is the message's full name, for errors; num and
// typ are the current field's number and wire type after next.
type decoder struct {
	msg string
	b   []byte
	num protowire.Number
	typ protowire.Type
}

// next reads the next field's tag; it returns false at the end of the message.
func (d *decoder) next() (bool, error) {
	if len(d.b) == 0 {
		return false, nil
	}
	num, typ, n := protowire.ConsumeTag(d.b)
	if n < 0 {
		return false, fmt.Errorf("%s: field tag: %w", d.msg, protowire.ParseError(n))
	}
	d.b = d.b[n:]
	d.num, d.typ = num, typ
	return true, nil
}

// skip passes over the current field's value: a field this package does not read.
func (d *decoder) skip() error {
	n := protowire.ConsumeFieldValue(d.num, d.typ, d.b)
	if n < 0 {
		return fmt.Errorf("%s: field %d: %w", d.msg, d.num, protowire.ParseError(n))
	}
	d.b = d.b[n:]
	return nil
}

func (d *decoder) errorf(field, format string, args ...any) error {
	return fmt.Errorf("%s.%s: %s", d.msg, field, fmt.Sprintf(format, args...))
}

// wrap prefixes err, from a nested message, with the field that holds it.
func (d *decoder) wrap(field string, err error) error {
	return fmt.Errorf("%s.%s: %w", d.msg, field, err)
}

func (d *decoder) want(field string, t protowire.Type) error {
	if d.typ != t {
		return d.errorf(field, "wire type %d, want %d", d.typ, t)
	}
	return nil
}

// rawBytes reads a length-delimited value; the result aliases the input.
func (d *decoder) rawBytes(field string) ([]byte, error) {
	if err := d.want(field, protowire.BytesType); err != nil {
		return nil, err
	}
	v, n := protowire.ConsumeBytes(d.b)
	if n < 0 {
		return nil, d.errorf(field, "%v", protowire.ParseError(n))
	}
	d.b = d.b[n:]
	return v, nil
}

// bytes reads a bytes field into a copy, so what is kept does not pin the whole input.
func (d *decoder) bytes(field string) ([]byte, error) {
	v, err := d.rawBytes(field)
	return bytes.Clone(v), err
}

// string reads a string field; proto3 strings must be UTF-8.
func (d *decoder) string(field string) (string, error) {
	v, err := d.rawBytes(field)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(v) {
		return "", d.errorf(field, "invalid UTF-8")
	}
	return string(v), nil
}

func (d *decoder) varint(field string) (uint64, error) {
	if err := d.want(field, protowire.VarintType); err != nil {
		return 0, err
	}
	v, n := protowire.ConsumeVarint(d.b)
	if n < 0 {
		return 0, d.errorf(field, "%v", protowire.ParseError(n))
	}
	d.b = d.b[n:]
	return v, nil
}

// uint32 reads a uint32 field, truncating a wider varint as protobuf does.
func (d *decoder) uint32(field string) (uint32, error) {
	v, err := d.varint(field)
	return uint32(v), err
}

// enum reads an enum field (an int32 on the wire); unknown values are kept.
func (d *decoder) enum(field string) (int32, error) {
	v, err := d.varint(field)
	return int32(v), err
}

func (d *decoder) bool(field string) (bool, error) {
	v, err := d.varint(field)
	return v != 0, err
}

// appendUint32s reads one element, or a packed run of them, of a repeated uint32 field.
func (d *decoder) appendUint32s(field string, dst []uint32) ([]uint32, error) {
	if d.typ == protowire.VarintType {
		v, err := d.uint32(field)
		return append(dst, v), err
	}
	if d.typ != protowire.BytesType {
		return dst, d.errorf(field, "wire type %d, want %d or %d (packed)", d.typ, protowire.VarintType, protowire.BytesType)
	}
	packed, err := d.rawBytes(field)
	if err != nil {
		return dst, err
	}
	for len(packed) > 0 {
		v, n := protowire.ConsumeVarint(packed)
		if n < 0 {
			return dst, d.errorf(field, "packed element %d: %v", len(dst), protowire.ParseError(n))
		}
		dst = append(dst, uint32(v))
		packed = packed[n:]
	}
	return dst, nil
}

// message reads a nested message field with decode, which merges it into its receiver (as
// protobuf merges a message field that occurs more than once).
func (d *decoder) message(field string, decode func([]byte) error) error {
	v, err := d.rawBytes(field)
	if err != nil {
		return err
	}
	if err := decode(v); err != nil {
		return d.wrap(field, err)
	}
	return nil
}

// setEnum reads an enum field into dst.
func setEnum[E ~int32](d *decoder, field string, dst *E) error {
	v, err := d.enum(field)
	*dst = E(v)
	return err
}

// enumName is the name of an enum value, or its number when it has none (as protobuf's
// String methods do).
func enumName(names []string, v int32) string {
	if v >= 0 && int(v) < len(names) {
		return names[v]
	}
	return strconv.Itoa(int(v))
}

// checkEmpty checks that b is a well-formed message, all of whose fields are skipped
// (google.protobuf.Empty, or one this package reads nothing of).
func checkEmpty(msg string, b []byte) error {
	d := decoder{msg: msg, b: b}
	for {
		ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		if err := d.skip(); err != nil {
			return err
		}
	}
}
