package authz

import (
	"net/netip"
	"strings"
)

// Conn is what the destination knows about one inbound connection. The zero value is a
// plaintext connection from and to the invalid address on port 0.
type Conn struct {
	// Principal is the peer's SPIFFE id without "spiffe://", e.g.
	// "cluster.local/ns/default/sa/web"; empty when the peer has no identity.
	Principal string
	// Namespace and ServiceAccount are those of the peer's identity; empty without one.
	Namespace      string
	ServiceAccount string
	// Source and Destination are the connection's addresses (IPv4-mapped IPv6 addresses are
	// compared as IPv4: call SetAddrs, or unmap them yourself).
	Source, Destination netip.Addr
	// Port is the destination port.
	Port uint16
}

// SetIdentity sets Principal, Namespace and ServiceAccount from a SPIFFE id
// ("spiffe://<td>/ns/<ns>/sa/<sa>", with or without the scheme). An empty id clears them (a
// plaintext peer). An id of another shape keeps its principal, with no namespace or service
// account. It does not allocate.
func (c *Conn) SetIdentity(spiffeID string) {
	p := strings.TrimPrefix(spiffeID, "spiffe://")
	c.Principal, c.Namespace, c.ServiceAccount = p, "", ""
	_, path, ok := strings.Cut(p, "/ns/")
	if !ok {
		return
	}
	ns, sa, ok := strings.Cut(path, "/sa/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") || strings.Contains(ns, "/") {
		return
	}
	c.Namespace, c.ServiceAccount = ns, sa
}

// SetAddrs sets the addresses and port, unmapping IPv4-mapped IPv6 addresses.
func (c *Conn) SetAddrs(src, dst netip.AddrPort) {
	c.Source, c.Destination, c.Port = src.Addr().Unmap(), dst.Addr().Unmap(), dst.Port()
}

// stringKind is how a stringMatch compares.
type stringKind uint8

const (
	exact stringKind = iota
	prefix
	suffix
	presence
)

type stringMatch struct {
	kind  stringKind
	value string
}

func (m stringMatch) matches(v string) bool {
	switch m.kind {
	case exact:
		return v == m.value
	case prefix:
		return strings.HasPrefix(v, m.value)
	case suffix:
		return strings.HasSuffix(v, m.value)
	default:
		return v != ""
	}
}

type serviceAccount struct{ namespace, name string }

// match is a compiled apiwire.Match (istio.security.Match).
type match struct {
	namespaces, notNamespaces looseStrings
	principals, notPrincipals looseStrings
	sas, notSAs               []serviceAccount
	srcIPs, notSrcIPs         []netip.Prefix
	dstIPs, notDstIPs         []netip.Prefix
	ports, notPorts           []uint32
}

type looseStrings []stringMatch

func (l looseStrings) any(v string) bool {
	for _, m := range l {
		if m.matches(v) {
			return true
		}
	}
	return false
}

func anyPrefix(l []netip.Prefix, a netip.Addr) bool {
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func anyPort(l []uint32, port uint16) bool {
	for _, p := range l {
		if p == uint32(port) {
			return true
		}
	}
	return false
}

func anySA(l []serviceAccount, c *Conn) bool {
	if c.Namespace == "" {
		return false
	}
	for _, s := range l {
		if s.namespace == c.Namespace && s.name == c.ServiceAccount {
			return true
		}
	}
	return false
}

func (m *match) empty() bool {
	return len(m.namespaces)+len(m.notNamespaces)+len(m.principals)+len(m.notPrincipals)+
		len(m.sas)+len(m.notSAs)+len(m.srcIPs)+len(m.notSrcIPs)+len(m.dstIPs)+len(m.notDstIPs)+
		len(m.ports)+len(m.notPorts) == 0
}

// matches reports whether every field m sets holds for c. An empty match never matches.
func (m *match) matches(c *Conn) bool {
	if m.empty() {
		return false
	}
	if len(m.dstIPs) > 0 && !anyPrefix(m.dstIPs, c.Destination) || anyPrefix(m.notDstIPs, c.Destination) {
		return false
	}
	if len(m.srcIPs) > 0 && !anyPrefix(m.srcIPs, c.Source) || anyPrefix(m.notSrcIPs, c.Source) {
		return false
	}
	if len(m.ports) > 0 && !anyPort(m.ports, c.Port) || anyPort(m.notPorts, c.Port) {
		return false
	}
	if len(m.sas) > 0 && !anySA(m.sas, c) || anySA(m.notSAs, c) {
		return false
	}
	// A peer without identity has no principal: no principal pattern matches it, not even
	// an exact "".
	if len(m.principals) > 0 && (c.Principal == "" || !m.principals.any(c.Principal)) ||
		c.Principal != "" && m.notPrincipals.any(c.Principal) {
		return false
	}
	if len(m.namespaces) > 0 && !m.namespaces.any(c.Namespace) || m.notNamespaces.any(c.Namespace) {
		return false
	}
	return true
}
