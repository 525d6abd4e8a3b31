// Package httpserve is a small HTTP/1.1 server for the operator endpoints of Ambit's
// components: ztunnel's admin (localhost:15000), Prometheus (15020) and readiness (15021)
// ports, where a scraper, a kubelet probe or an operator's curl makes a few requests at a
// time. It exists so that ztunnel, whose resident memory is mostly its own binary's pages
// (issue #4), need not link net/http's server, client and HTTP/2 code for them.
//
// What it speaks:
//
//   - Requests in origin form (GET /path?query HTTP/1.1) or absolute form, HTTP/1.0 or 1.1,
//     any method token; a [Mux] routes them by method and path and answers 404 and 405.
//   - Request bodies with a Content-Length up to [Config.MaxBodyBytes], with Expect:
//     100-continue. Chunked request bodies get 501: no client of these endpoints sends one.
//   - Responses buffered up to 32 KiB and sent with a Content-Length; a larger body, or one
//     the handler is still writing (a CPU profile over 30 s), streams with chunked transfer
//     encoding (close-delimited for an HTTP/1.0 client).
//   - Keep-alive for HTTP/1.1 clients that do not ask to close; HTTP/1.0 connections close
//     after one answer.
//
// Bad input never reaches a handler: a garbage request line, a header block past
// [Config.MaxHeaderBytes], a malformed header or Content-Length, an unsupported HTTP version
// or transfer coding gets a 4xx or 5xx answer naming the problem and the connection is
// closed; a client that sends its header block slower than [Config.ReadHeaderTimeout], or
// idles past [Config.IdleTimeout], is disconnected. Each connection has one goroutine, owned
// by the [Server]; a handler that panics is logged with its stack and its connection closed,
// and the server keeps serving the others.
//
// A request's context ends when its client disconnects (the server watches the connection
// once the request body has been read), when the handler returns, or when [Server.Shutdown]
// gives up waiting, so a handler that waits (a profile over N seconds) can stop early.
//
// Not supported: TLS, HTTP/2, upgrades, trailers, chunked request bodies, and response
// compression.
package httpserve
