package xds

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/ztunnel/istiod"
)

// Resource types the client subscribes to.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// NodeNameKey is the node metadata field that names the Kubernetes node; istiod-lite scopes the
// wildcard subscription by it.
const NodeNameKey = "NODE_NAME"

// Config configures a Client.
type Config struct {
	// Address is istiod-lite's xDS address, host:port (15012 TLS, 15010 plaintext).
	Address string
	// Plaintext dials without TLS (15010, local use). Otherwise RootCAFile must name the PEM
	// roots that verify the server, whose name is ServerName (default: Address's host).
	Plaintext  bool
	RootCAFile string
	ServerName string
	// TokenFile holds the bearer token (ztunnel's service-account token), sent as
	// "authorization: Bearer <token>" on every stream. It is re-read on each connect, so a
	// rotated token is picked up. Empty: no token.
	TokenFile string

	// PodIP, PodName, PodNamespace and NodeName identify this ztunnel: the node id is
	// ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local and NodeName goes into the metadata.
	PodIP        string
	PodName      string
	PodNamespace string
	NodeName     string

	// InitialBackoff and MaxBackoff bound the delay between reconnects (defaults 500 ms, 30 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration

	// Logger reports connects, disconnects and refused resources; nil: none.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = c.InitialBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// NodeID returns the xDS node id of this ztunnel.
func (c Config) NodeID() string {
	return fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", c.PodIP, c.PodName, c.PodNamespace, c.PodNamespace)
}

func (c Config) node() *apiwire.Node {
	fields := map[string]string{}
	if c.NodeName != "" {
		fields[NodeNameKey] = c.NodeName
	}
	if c.PodNamespace != "" {
		fields["NAMESPACE"] = c.PodNamespace
	}
	if c.PodName != "" {
		fields["NAME"] = c.PodName
	}
	return &apiwire.Node{ID: c.NodeID(), Metadata: fields}
}

func (c Config) dial() (*grpcwire.Conn, error) {
	conn, err := istiod.Dial(c.Address, c.Plaintext, c.RootCAFile, c.ServerName)
	if err != nil {
		return nil, fmt.Errorf("xds config: %w", err)
	}
	return conn, nil
}

// token reads the bearer token, "" when none is configured.
func (c Config) token() (string, error) {
	t, err := istiod.Token(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("xds token: %w", err)
	}
	return t, nil
}
