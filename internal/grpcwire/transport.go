package grpcwire

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
)

// newTransport returns the HTTP/2-only round tripper of net/http (h2c with prior knowledge when
// tlsConf is nil) and the function that drops its idle connections.
func newTransport(tlsConf *tls.Config, dial func(ctx context.Context, network, address string) (net.Conn, error)) (http.RoundTripper, func()) {
	var p http.Protocols
	if tlsConf != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	t := &http.Transport{
		DialContext:     dial,
		TLSClientConfig: tlsConf,
		Protocols:       &p,
		// Otherwise it asks for gzip and unzips on its own: gRPC compresses per message.
		DisableCompression: true,
	}
	return t, t.CloseIdleConnections
}
