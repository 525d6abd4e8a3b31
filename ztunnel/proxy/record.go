package proxy

import (
	"github.com/ambit-mesh/ambit/internal/authz"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Direction says which side of a connection this ztunnel proxied.
type Direction string

// The directions a connection is recorded with.
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// Conn describes one proxied connection for metrics and the access log.
type Conn struct {
	Direction Direction
	Src, Dst  netip.AddrPort
	// SrcWorkload and DstWorkload are nil when not known (outside the mesh).
	SrcWorkload, DstWorkload *state.Workload
	// DstService is the service the client addressed, if any.
	DstService *state.Service
	// SrcIdentity and DstIdentity are nil without mTLS.
	SrcIdentity, DstIdentity *identity.Identity
	// MutualTLS is true when the connection went (or came) over HBONE.
	MutualTLS bool
	// Tunnel is the HBONE endpoint the connection went through (the peer's or, inbound, this
	// pod's :15008); invalid for plaintext.
	Tunnel netip.AddrPort
	Start  time.Time
}

// Outcome is how a connection ended.
type Outcome struct {
	// Sent counts the bytes from the client to the server, Received those back.
	Sent, Received int64
	// Decision is the authorization outcome, for inbound connections.
	Decision *authz.Decision
	Err      error
}

// Recorder observes connections. Open is called once the destination is chosen, Close exactly
// once after it.
type Recorder interface {
	Open(c *Conn) ConnRecord
}

// ConnRecord is one connection's record. AddRequest and AddResponse count bytes while they
// flow (from the two copy goroutines at once), so that long connections show in the metrics
// before they end; Close's Outcome carries the totals.
type ConnRecord interface {
	AddRequest(n int64)
	AddResponse(n int64)
	Close(o Outcome)
}

type nopRecorder struct{}

func (nopRecorder) Open(*Conn) ConnRecord { return nopRecord{} }

type nopRecord struct{}

func (nopRecord) AddRequest(int64)  {}
func (nopRecord) AddResponse(int64) {}
func (nopRecord) Close(Outcome)     {}
