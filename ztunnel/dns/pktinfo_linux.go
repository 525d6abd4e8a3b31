package dns

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// The proxy's UDP socket is bound to the wildcard address and receives queries addressed to
// other IPs: the kube-dns Service IP when capture delivers with TPROXY or bpf_sk_assign, or
// 127.0.0.1 after an nftables REDIRECT. Clients (glibc, musl, Go) use connected UDP sockets and
// drop answers from any other source, and conntrack only reverses a REDIRECT for replies from the
// redirected address. So every answer leaves from the address its query arrived at: the socket
// reports it with IP_PKTINFO / IPV6_RECVPKTINFO and the answer carries it back as the source
// (for a non-local source the socket needs IP_TRANSPARENT, which ztunnel's listeners have).

// enablePktinfo asks the kernel to report each datagram's destination address on c.
func enablePktinfo(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	err = rc.Control(func(fd uintptr) {
		// One of them fails depending on the socket's family; a dual-stack socket takes both.
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1) == nil {
			ok = true
		}
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1) == nil {
			ok = true
		}
	})
	return err == nil && ok
}

// packetDst returns the destination address reported in oob, or the zero Addr.
func packetDst(oob []byte) netip.Addr {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
			return netip.AddrFrom4([4]byte(m.Data[8:12]))
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { struct in6_addr ipi6_addr; unsigned int ipi6_ifindex; }
			return netip.AddrFrom16([16]byte(m.Data[0:16])).Unmap()
		}
	}
	return netip.Addr{}
}

// sourceOOB is the control message that makes an answer leave from src.
func sourceOOB(src netip.Addr) []byte {
	if src.Is4() {
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
	}
	return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.As16()})
}
