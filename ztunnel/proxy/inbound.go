package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// errDenied is returned by admit when policy refuses a connection.
var errDenied = errors.New("denied by authorization policy")

// errNoWorkload is returned by admit when the addressed workload is not one this ztunnel serves.
var errNoWorkload = errors.New("no local workload has this address")

// plaintextInbound serves one connection captured on 15006: a client without mesh identity
// (outside the mesh, or a node). It is authorized with no peer identity, so PeerAuthentication
// STRICT refuses it.
func (px *Proxy) plaintextInbound(p *Pod, c net.Conn) {
	start := time.Now()
	src := addrPort(c.RemoteAddr())
	dst, err := sockopt.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		px.log.Warn("inbound: no original destination", "pod", p.key(), "src", src.String(), "error", err)
		c.Close()
		return
	}
	if isZtunnelPort(dst.Port()) {
		px.log.Warn("inbound: plaintext connection to a ztunnel port refused", "pod", p.key(), "src", src.String(), "dst", dst.String())
		reset(c)
		return
	}
	rc := &Conn{Direction: Inbound, Src: src, Dst: dst, Start: start}
	px.serveInbound(p, rc, c, nil)
}

// serveHBONE serves the pod's HBONE listener until it closes.
func (px *Proxy) serveHBONE(p *Pod, ln net.Listener) {
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Certificate:           func() (*tls.Certificate, error) { return px.podCert(p) },
		Roots:                 func() (*x509.CertPool, error) { return px.cfg.Certs.Roots(), nil },
		TrustDomain:           p.Identity.TrustDomain,
		RequireLocalAuthority: true,
		HandshakeTimeout:      px.cfg.HandshakeTimeout,
		Handler:               func(r *hbone.Request) { px.hboneInbound(p, r) },
		Go:                    px.workers.Go,
	})
	if err != nil {
		px.log.Error("HBONE server not started", "pod", p.key(), "error", err)
		return
	}
	stop := context.AfterFunc(p.ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, hbone.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		px.log.Warn("HBONE listener stopped", "pod", p.key(), "error", err)
	}
	// The listener is closed: ztunnel is stopping (the pod's context ends when the drain
	// does) or the pod was removed (it ends at once). GOAWAY sends the peers' new streams to
	// a new connection, which in a rolling update reaches the new ztunnel's listener, while
	// the open streams go on until they finish or the context ends.
	srv.Shutdown(p.ctx)
}

// hboneInbound serves one CONNECT request that reached the pod's HBONE listener. The library
// has already refused malformed requests and authorities that are not this pod's address.
func (px *Proxy) hboneInbound(p *Pod, r *hbone.Request) {
	peer := r.Peer
	rc := &Conn{
		Direction:   Inbound,
		Src:         addrPort(r.RemoteAddr),
		Dst:         r.Authority,
		Start:       time.Now(),
		SrcIdentity: &peer,
		MutualTLS:   true,
		Tunnel:      addrPort(r.LocalAddr),
	}
	// The tunnel's outer connection comes from the client pod's own address (its ztunnel dials
	// from inside the client's netns), which is what the app should see; Forwarded names the
	// client's port.
	if fwd, ok := forwardedFor(r.Header); ok && fwd.Addr() == rc.Src.Addr() {
		rc.Src = fwd
	}
	px.serveInbound(p, rc, nil, r)
}

// serveInbound authorizes rc and relays it to the app. Exactly one of c (plaintext) and r
// (HBONE, not yet answered) is set.
func (px *Proxy) serveInbound(p *Pod, rc *Conn, c net.Conn, r *hbone.Request) {
	a := &authz.Conn{}
	a.SetAddrs(rc.Src, rc.Dst)
	if rc.SrcIdentity != nil {
		a.SetIdentity(rc.SrcIdentity.String())
	}
	ctx, cancel := context.WithTimeout(p.ctx, px.cfg.ConnectTimeout)
	app, d, err := px.admit(ctx, p, rc, a)
	if rc.SrcIdentity != nil {
		// A mesh peer: name its workload in metrics and logs (held after the first lookup).
		if w, werr := px.cfg.Mesh.FindWorkload(ctx, px.cfg.Network, rc.Src.Addr()); werr == nil {
			rc.SrcWorkload = w
		}
	}
	cancel()
	rec := px.cfg.Recorder.Open(rc)
	if err != nil {
		if r != nil {
			status := hbone.StatusServiceUnavailable
			if errors.Is(err, errDenied) {
				status = hbone.StatusUnauthorized
			}
			r.Reject(status, err.Error())
		} else {
			reset(c)
		}
		rec.Close(Outcome{Decision: d, Err: err})
		return
	}
	if r != nil {
		s, err := r.Accept()
		if err != nil {
			app.Close()
			rec.Close(Outcome{Decision: d, Err: fmt.Errorf("answering the CONNECT: %w", err)})
			return
		}
		c = s
	}
	ic := &inboundConn{pod: p, dst: rc.DstWorkload, attempt: *a, close: func() { reset(app); c.Close() }}
	px.conns.add(ic)
	stop := context.AfterFunc(p.ctx, ic.close)
	sent, received, err := relay(px.workers, c, app, rec)
	stop()
	px.conns.remove(ic)
	rec.Close(Outcome{Sent: sent, Received: received, Decision: d, Err: err})
}

// admit authorizes an inbound connection a to the local pod p and, if allowed, connects to the
// app from the client's own address. It fills in rc's destination.
func (px *Proxy) admit(ctx context.Context, p *Pod, rc *Conn, a *authz.Conn) (net.Conn, *authz.Decision, error) {
	dst, err := px.cfg.Mesh.FindWorkload(ctx, px.cfg.Network, rc.Dst.Addr())
	switch {
	case errors.Is(err, state.ErrNotFound) || (err == nil && (dst.Namespace != p.Namespace || dst.Name != p.Name)):
		// Fail closed: without its workload the pod's selector policies cannot be evaluated.
		return nil, nil, fmt.Errorf("pod %s, address %s: %w", p.key(), rc.Dst.Addr(), errNoWorkload)
	case err != nil:
		return nil, nil, fmt.Errorf("looking up workload %s: %w", rc.Dst.Addr(), err)
	}
	rc.DstWorkload = dst
	id := px.workloadIdentity(dst)
	rc.DstIdentity = &id
	d := px.cfg.Mesh.Authorize(dst, a)
	if !d.Allowed() {
		px.log.Info("connection denied", "pod", p.key(), "src", rc.Src.String(), "dst", rc.Dst.String(), "peer", a.Principal, "reason", d.String())
		return nil, &d, fmt.Errorf("%s: %w", d, errDenied)
	}
	app, err := px.dial(ctx, p, rc.Src.Addr(), rc.Dst)
	if err != nil {
		return nil, &d, fmt.Errorf("connecting to the app at %s: %w", rc.Dst, err)
	}
	return app, &d, nil
}

// forwardedFor reads the client address from the first Forwarded element's for= parameter.
func forwardedFor(h hbone.Header) (netip.AddrPort, bool) {
	first, _, _ := strings.Cut(h.Get("Forwarded"), ",")
	for _, part := range strings.Split(first, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		ap, err := netip.ParseAddrPort(strings.Trim(val, `"`))
		if err != nil {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	}
	return netip.AddrPort{}, false
}
