package echo

import (
	"net"
	"strconv"
	"strings"
)

// Protocol names reported in [Response.Protocol].
const (
	ProtocolHTTP1 = "HTTP/1.1"
	ProtocolHTTP2 = "HTTP/2.0"
	ProtocolGRPC  = "GRPC"
	ProtocolTCP   = "TCP"
)

// Identity is who a server says it is. The command fills it from the
// Kubernetes downward API.
type Identity struct {
	Pod            string
	Namespace      string
	ServiceAccount string
	Version        string
	Cluster        string
}

// Response is the answer of the server to one request, as JSON. The client
// fills Code with the HTTP status it received.
type Response struct {
	Pod            string `json:"pod"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Version        string `json:"version"`
	Cluster        string `json:"cluster,omitempty"`
	Protocol       string `json:"protocol"`
	// Port is the local port that served the request.
	Port int `json:"port"`
	// SourceAddr is the remote address the server saw, ip:port.
	SourceAddr string `json:"sourceAddr"`
	// Host is the Host header or the :authority pseudo-header.
	Host   string `json:"host"`
	Method string `json:"method"`
	Path   string `json:"path"`
	// Headers are the request headers (gRPC: metadata) with lower-case
	// names; several values of one header are joined by ",".
	Headers map[string]string `json:"headers"`
	// Code is the HTTP status of the answer; zero for gRPC and TCP.
	Code int `json:"code,omitempty"`
	// Payload is the request body (HTTP), the "payload" field (gRPC) or the
	// bytes echoed back (TCP, client side only).
	Payload string `json:"payload,omitempty"`
}

func (id Identity) response(protocol string, port int) Response {
	return Response{
		Pod:            id.Pod,
		Namespace:      id.Namespace,
		ServiceAccount: id.ServiceAccount,
		Version:        id.Version,
		Cluster:        id.Cluster,
		Protocol:       protocol,
		Port:           port,
		Headers:        map[string]string{},
	}
}

// addHeader records one header in the lower-case form HTTP/2 puts on the wire,
// so that tests look up the same key whatever the protocol.
func (r *Response) addHeader(name string, values []string) {
	r.Headers[strings.ToLower(name)] = strings.Join(values, ",")
}

// portOf returns the port of a listener address, or 0 if it has none.
func portOf(addr net.Addr) int {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.Port
	}
	_, p, err := net.SplitHostPort(addr.String())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
