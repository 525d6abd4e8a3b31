// Package hbone implements HBONE, the mesh tunnel of DESIGN.md section 4:
// HTTP/2 CONNECT streams over mutual TLS 1.3 (AES-GCM suites, ALPN h2, no SNI,
// no session resumption). It is a library used by ztunnel and the waypoint and
// knows nothing about either.
//
// Server serves HBONE on listeners the caller provides (one per pod netns in
// ztunnel), each Server with its own certificate source. Clients must present
// a certificate from the configured trust domain. The library answers 400
// itself for a request that is not a plain CONNECT, has an authority that is
// not ip:port, targets a mesh port (15001, 15006, 15008: loop protection), or
// (with RequireLocalAuthority) names an IP other than the connection's local
// one. Everything else goes to the Handler as a *Request carrying the parsed
// authority, the peer identity, the headers and the outer addresses; the
// handler Rejects (401, 503, ... with a message) or Accepts and gets a
// *Stream. Shutdown sends GOAWAY and drains: the streams a client opened
// before it read the GOAWAY are still served, the client retries later ones on
// a new connection (in a rolling update another server's listener on the same
// port takes it), and a drained connection is left for the client to close
// (a second at most), so no request it sent meanwhile meets a reset. Close ends
// everything at once.
//
// Pool dials streams: it verifies that the server's identity is one of the
// expected ones, reuses a connection per {source identity, destination
// identities, address} while it has fewer than 100 open streams, releases
// idle connections after 5 minutes and drops failed or GOAWAY'd ones. A
// non-200 answer comes back as a *StatusError.
//
// A Stream is a net.Conn: Read, Write, CloseWrite (END_STREAM), Close
// (END_STREAM or RST_STREAM) and deadlines. CopyTo (and WriteTo) copies a
// stream into a writer; into a *net.TCPConn the connection's read loop writes
// DATA payloads itself while the socket takes them without blocking, so a
// small request costs no goroutine hand-off. A stream the peer reset fails with
// ErrStreamReset, one whose connection died with ErrConnClosed.
//
// The HTTP/2 data path is written for throughput rather than generality: it
// speaks only what CONNECT tunnels need (no request bodies beyond the tunnel,
// no push, no priorities), advertises 1 MiB frames, a 4 MiB stream window and a
// 16 MiB connection window, returns window credit in quarter-window batches,
// reads DATA payloads straight into per-stream buffers that grow with the flow
// and are pooled (an idle stream holds none), and lets concurrent streams
// share one buffered TLS write: a writer flushes only when no other writer is
// queued behind it, the writer of a small frame first lets the goroutines that
// are ready to run go (streams woken by the same network poll add their frames
// to its flush), and the TLS records of one flush leave in one syscall.
//
// crypto/tls does the handshake; the TLS 1.3 record layer after it is this package's
// (record.go), so that a bulk transfer's plaintext is copied once on the way out (into the
// record sealed in place in the flush's buffer) and never on the way in (records are
// decrypted straight into the frame reader's buffer from a large read of the socket). It
// takes the traffic secrets from crypto/tls's key log, which stays in memory; handles
// alerts, KeyUpdate (and updates its own keys every 2^24 records) and NewSessionTicket
// (ignored); and fails a connection that sends anything else with an error saying what
// and an alert. It is tested against crypto/tls in both roles and fuzzed.
// It honours the peer's settings, PINGs every 10 s and closes a connection whose PING is
// unanswered for 20 s. The framing is its own (frame.go; HPACK is x/net/http2/hpack) and so
// are its header type and status codes: the package links neither golang.org/x/net/http2
// nor net/http, about 1 MB of ztunnel's binary. It interoperates with
// golang.org/x/net/http2 in both directions, which the tests check.
package hbone
