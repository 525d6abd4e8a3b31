package hbone

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// Ports that are never valid CONNECT targets: tunnelling to them would loop
// traffic back into the tunnel (DESIGN.md section 3).
var loopPorts = [...]uint16{15001, 15006, 15008}

// errBadRequest is wrapped by every reason parseRequest refuses a request.
var errBadRequest = errors.New("bad HBONE request")

// parseRequest validates a CONNECT request's header block and returns its
// authority and regular headers (canonical keys). local is the outer socket's
// local address, checked against the authority when checkLocal is set.
func parseRequest(fields []hpack.HeaderField, local netip.Addr, checkLocal bool) (netip.AddrPort, Header, error) {
	var method, authority string
	var haveMethod, haveAuthority bool
	hdr := make(Header, len(fields))
	for _, f := range fields {
		if !strings.HasPrefix(f.Name, ":") {
			hdr.Add(f.Name, f.Value)
			continue
		}
		switch f.Name {
		case ":method":
			if haveMethod {
				return netip.AddrPort{}, nil, fmt.Errorf("%w: duplicate :method", errBadRequest)
			}
			method, haveMethod = f.Value, true
		case ":authority":
			if haveAuthority {
				return netip.AddrPort{}, nil, fmt.Errorf("%w: duplicate :authority", errBadRequest)
			}
			authority, haveAuthority = f.Value, true
		default:
			// :scheme, :path and :protocol mark a normal or extended CONNECT request.
			return netip.AddrPort{}, nil, fmt.Errorf("%w: pseudo-header %s not allowed in CONNECT", errBadRequest, f.Name)
		}
	}
	if method != "CONNECT" {
		return netip.AddrPort{}, nil, fmt.Errorf("%w: method %q, want CONNECT", errBadRequest, method)
	}
	ap, err := parseAuthority(authority)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	if checkLocal && ap.Addr().Unmap() != local.Unmap() {
		return netip.AddrPort{}, nil, fmt.Errorf("%w: authority %s is not this connection's destination %s", errBadRequest, ap, local)
	}
	return ap, hdr, nil
}

// parseAuthority parses "ip:port" / "[ipv6]:port" and refuses loop ports.
func parseAuthority(authority string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(authority)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: authority %q is not ip:port", errBadRequest, authority)
	}
	if ap.Addr().Zone() != "" || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("%w: authority %q is not a usable ip:port", errBadRequest, authority)
	}
	for _, p := range loopPorts {
		if ap.Port() == p {
			return netip.AddrPort{}, fmt.Errorf("%w: authority %q: port %d is reserved for the mesh (loop)", errBadRequest, authority, p)
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
