// Package apiwire decodes the api/ messages ztunnel receives (istio.workload.Address,
// istio.security.Authorization) into plain Go structs, and encodes the google.protobuf.Struct
// it sends, with protowire alone. The generated api/ packages link protobuf's runtime and its
// descriptor registry (about 2 MB of binary and their heap at start), which ztunnel cannot
// afford (issue #4); they stay the reference that this package's tests compare with.
//
// Decoders read only the fields ztunnel uses and skip the others, as unknown fields are
// skipped, so a newer control plane may add fields. A field read here with a wire type other
// than its own, truncated input and invalid UTF-8 in a string are errors naming the field
// (wrapping ErrMalformed), never a panic. Repeated occurrences of a field behave as protobuf's
// decoders: the last scalar wins, messages merge, repeated fields append, map entries replace.
package apiwire
