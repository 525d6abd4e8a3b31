package apiwire

import (
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// AppendStruct appends to b the encoding of a google.protobuf.Struct whose fields are fields,
// each a string Value, in the order of their keys: the bytes protobuf's deterministic encoding
// gives. It is the message's body; the caller adds the tag and length that hold it.
func AppendStruct(b []byte, fields map[string]string) []byte {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		// Struct.fields (1) is a map<string, Value>: one entry message per key, with the key
		// (1) and the Value (2), whose string_value is field 3.
		var value []byte
		value = protowire.AppendTag(value, 3, protowire.BytesType)
		value = protowire.AppendString(value, fields[k])
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, value)
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	return b
}
