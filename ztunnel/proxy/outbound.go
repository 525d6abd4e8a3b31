package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// errLoop refuses connections to ztunnel's own in-pod ports, which would loop.
var errLoop = errors.New("destination is a ztunnel port")

// outbound proxies one connection the app made, captured on 15001.
func (px *Proxy) outbound(p *Pod, c net.Conn) {
	start := time.Now()
	src := addrPort(c.RemoteAddr())
	orig, err := sockopt.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		px.log.Warn("outbound: no original destination", "pod", p.key(), "src", src.String(), "error", err)
		c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, px.cfg.ConnectTimeout)
	rc := &Conn{Direction: Outbound, Src: src, Dst: orig, Start: start, SrcIdentity: &p.Identity}
	rc.SrcWorkload, _ = px.cfg.Mesh.FindWorkload(ctx, px.cfg.Network, src.Addr())
	upstream, err := px.connectOutbound(ctx, p, rc)
	cancel()
	rec := px.cfg.Recorder.Open(rc)
	if err != nil {
		reset(c)
		px.log.Debug("outbound refused", "pod", p.key(), "src", src.String(), "dst", orig.String(), "error", err)
		rec.Close(Outcome{Err: err})
		return
	}
	sent, received, err := relay(px.workers, c, upstream, rec)
	rec.Close(Outcome{Sent: sent, Received: received, Err: err})
}

// connectOutbound picks the destination of rc (a service's endpoint, a workload, or the
// original address) and connects to it: HBONE to mesh workloads, plain TCP otherwise. It fills
// in what it learned about the destination.
func (px *Proxy) connectOutbound(ctx context.Context, p *Pod, rc *Conn) (net.Conn, error) {
	orig := rc.Dst
	if isZtunnelPort(orig.Port()) && orig.Addr().IsLoopback() {
		return nil, fmt.Errorf("connecting to %s: %w", orig, errLoop)
	}
	var dst *state.Workload
	var target netip.AddrPort
	if svc, _, ok := px.cfg.Mesh.ServiceByVIP(px.cfg.Network, orig.Addr(), orig.Port()); ok {
		rc.DstService = svc
		ep, err := px.cfg.Mesh.PickEndpoint(ctx, svc, orig.Port())
		if err != nil {
			return nil, fmt.Errorf("service %s port %d: %w", svc.Key, orig.Port(), err)
		}
		dst, target = ep.Workload, ep.Addr
	} else {
		w, err := px.cfg.Mesh.FindWorkload(ctx, px.cfg.Network, orig.Addr())
		switch {
		case errors.Is(err, state.ErrNotFound):
			// Not in the mesh's view at all: straight through, from the pod's own address.
			return px.dial(ctx, p, netip.Addr{}, orig)
		case err != nil:
			return nil, fmt.Errorf("looking up workload %s: %w", orig.Addr(), err)
		}
		dst, target = w, orig
	}
	rc.DstWorkload = dst
	if !dst.HBONE {
		return px.dial(ctx, p, netip.Addr{}, target)
	}
	if isZtunnelPort(target.Port()) {
		return nil, fmt.Errorf("connecting to %s: %w", target, errLoop)
	}
	id := px.workloadIdentity(dst)
	rc.DstIdentity, rc.MutualTLS = &id, true
	rc.Tunnel = netip.AddrPortFrom(target.Addr(), HBONEPort)
	return px.cfg.Tunnel.Dial(ctx, px.source(p), hbone.Target{
		Address:    rc.Tunnel,
		Authority:  target,
		Identities: []identity.Identity{id},
		Header:     px.requestHeader(rc),
	})
}

// source is the pod as the client side of its tunnels.
func (px *Proxy) source(p *Pod) *hbone.Source {
	p.srcOnce.Do(func() {
		p.src = &hbone.Source{
			Identity:    p.Identity,
			Certificate: func() (*tls.Certificate, error) { return px.podCert(p) },
			// The roots come with the certificates, and TLS 1.3 has the client check the
			// server before it sends its own: a ztunnel that has just started (in a rolling
			// update, next to the old one) would check it against no roots at all.
			Roots: func() (*x509.CertPool, error) {
				if _, err := px.podCert(p); err != nil {
					return nil, err
				}
				return px.cfg.Certs.Roots(), nil
			},
			DialContext: px.dialer(p),
		}
	})
	return p.src
}

// podCert returns the pod's certificate, waiting at most a handshake's time for its fetch.
func (px *Proxy) podCert(p *Pod) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(p.ctx, px.cfg.HandshakeTimeout)
	defer cancel()
	return px.cfg.Certs.Get(ctx, p.Identity)
}

// workloadIdentity is the SPIFFE identity a workload's certificate carries.
func (px *Proxy) workloadIdentity(w *state.Workload) identity.Identity {
	td := w.TrustDomain
	if td == "" {
		td = px.cfg.TrustDomain
	}
	sa := w.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return identity.Identity{TrustDomain: td, Namespace: w.Namespace, ServiceAccount: sa}
}

// requestHeader builds the CONNECT request's headers (DESIGN.md section 4).
func (px *Proxy) requestHeader(rc *Conn) hbone.Header {
	h := make(hbone.Header, 3)
	fwd := fmt.Sprintf("for=%q", rc.Src.String())
	if rc.DstService != nil {
		fwd += ";host=" + rc.DstService.Hostname
	}
	h["Forwarded"] = []string{fwd}
	h["Traceparent"] = []string{newTraceparent()}
	if w := rc.SrcWorkload; w != nil && w.Resource != nil {
		h["Baggage"] = []string{baggage(w.Resource)}
	}
	return h
}

// newTraceparent starts a W3C trace for the connection (version 00, not sampled).
func newTraceparent() string {
	var b [24]byte
	for i := 0; i < len(b); i += 8 {
		v := rand.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

// baggage carries the source workload's metadata, as Istio's ztunnel does.
func baggage(w *apiwire.Workload) string {
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
	}
	add("k8s.cluster.name", w.ClusterID)
	add("k8s.namespace.name", w.Namespace)
	if w.WorkloadName != "" {
		add("k8s."+strings.ToLower(w.WorkloadType.String())+".name", w.WorkloadName)
	}
	add("service.name", w.CanonicalName)
	add("service.version", w.CanonicalRevision)
	return b.String()
}

func isZtunnelPort(p uint16) bool {
	return p == OutboundPort || p == InboundPort || p == HBONEPort
}

// addrPort converts a net.Addr of a TCP or UDP socket.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (p *Pod) key() string { return p.Namespace + "/" + p.Name }
