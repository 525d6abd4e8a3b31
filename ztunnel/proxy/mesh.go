package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/netip"

	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Mesh is what the proxy reads about the mesh; *state.State implements it. Every call is on a
// connection's path.
type Mesh interface {
	// FindWorkload returns the workload holding ip, asking the control plane when it is not
	// known locally; state.ErrNotFound when the mesh has none.
	FindWorkload(ctx context.Context, network string, ip netip.Addr) (*state.Workload, error)
	// ServiceByVIP returns the service with virtual IP ip that exposes port.
	ServiceByVIP(network string, ip netip.Addr, port uint16) (*state.Service, state.Port, bool)
	// PickEndpoint chooses a healthy workload behind svc for servicePort, with its address.
	PickEndpoint(ctx context.Context, svc *state.Service, servicePort uint16) (state.Endpoint, error)
	// Authorize decides an inbound connection to the local workload dst.
	Authorize(dst *state.Workload, c *authz.Conn) authz.Decision
}

// Certs hands out the certificates of local identities; *certs.Manager implements it.
type Certs interface {
	// Get returns id's certificate, waiting for its first fetch.
	Get(ctx context.Context, id identity.Identity) (*tls.Certificate, error)
	// Roots returns the current trust roots.
	Roots() *x509.CertPool
}
