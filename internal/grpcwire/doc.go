// Package grpcwire is a small gRPC client: unary and bidirectional-streaming calls over one
// HTTP/2 connection (TLS with ALPN h2, or h2c with prior knowledge), messages framed with
// gRPC's 5-byte prefix and never compressed, status read from the grpc-status and grpc-message
// trailers. It speaks the wire protocol and nothing more: no name resolution, load balancing,
// retries, interceptors, compression or protobuf codec. Messages are bytes; callers marshal
// them. It exists so that ztunnel can call istiod-lite without linking grpc-go (about 1 MB of
// ztunnel's binary, and ztunnel's resident memory is mostly its binary: issue #4).
//
// The HTTP/2 client side is its own (transport.go, read.go, h2stream.go, frame.go), on a
// net.Conn with golang.org/x/net/http2/hpack for the headers, not net/http's client: with
// that, ztunnel links no net/http (about 0.9 MB of its binary). internal/hbone frames HTTP/2
// itself too, and the two share no code: hbone's reader and writers are built around its
// CONNECT data path (DATA payloads read straight into stream buffers or sockets, batched TLS
// writes), and what both hold (frame and error-code constants, the 9-byte header) is too
// little to be worth a package the data path would then depend on.
//
// The name says what it is: gRPC's wire format, not a gRPC framework.
package grpcwire
