package proxy

import (
	"net"
	"sync"

	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// inboundConns holds the open inbound connections so that a policy change can re-check them.
type inboundConns struct {
	// mu guards conns.
	mu    sync.Mutex
	conns map[*inboundConn]struct{}
}

// inboundConn is one authorized inbound connection.
type inboundConn struct {
	pod     *Pod
	dst     *state.Workload
	attempt authz.Conn
	// close ends the connection: both the client side and the app side.
	close func()
}

func newInboundConns() *inboundConns {
	return &inboundConns{conns: map[*inboundConn]struct{}{}}
}

func (s *inboundConns) add(c *inboundConn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *inboundConns) remove(c *inboundConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// snapshot returns the open connections.
func (s *inboundConns) snapshot() []*inboundConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*inboundConn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Recheck authorizes every open inbound connection again, against the policies the Mesh holds
// now, and closes the ones that are now denied. Call it after every policy change. It returns
// how many it closed.
func (px *Proxy) Recheck() int {
	closed := 0
	for _, c := range px.conns.snapshot() {
		// The destination workload may have changed too (its policy list).
		dst := c.dst
		if w, err := px.cfg.Mesh.FindWorkload(c.pod.ctx, px.cfg.Network, c.attempt.Destination); err == nil {
			dst = w
		}
		d := px.cfg.Mesh.Authorize(dst, &c.attempt)
		if d.Allowed() {
			continue
		}
		px.log.Info("closing a connection a policy change denies", "pod", c.pod.key(),
			"src", c.attempt.Source.String(), "dst", c.attempt.Destination.String(), "port", c.attempt.Port,
			"peer", c.attempt.Principal, "reason", d.String())
		c.close()
		closed++
	}
	return closed
}

// reset closes c so that the peer sees a reset rather than an orderly end.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
