// Package sockopt sets the socket options that ztunnel's sockets inside a pod network namespace
// need (SO_MARK so the capture rules skip them, IP_TRANSPARENT so they can accept redirected
// connections and bind to non-local addresses) and reads a captured connection's original
// destination.
package sockopt

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ZtunnelMark is the SO_MARK every socket ztunnel opens inside a pod netns carries (1337);
// the redirection rules never capture packets with this mark.
const ZtunnelMark = 0x539

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST
// (linux/netfilter_ipv6/ip6_tables.h); both are 80, at SOL_IP and SOL_IPV6.
const soOriginalDst = 80

// Mark sets SO_MARK on fd.
func Mark(fd int, mark uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("setting SO_MARK %#x: %w", mark, err)
	}
	return nil
}

// Transparent sets IP_TRANSPARENT on fd (IPV6_TRANSPARENT as well on an IPv6 socket), so it
// can accept connections redirected by TPROXY or bpf_sk_assign and bind to a non-local address.
// It needs CAP_NET_ADMIN or CAP_NET_RAW.
func Transparent(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("reading socket domain: %w", err)
	}
	switch domain {
	case unix.AF_INET:
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("setting IP_TRANSPARENT: %w", err)
		}
	case unix.AF_INET6:
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("setting IPV6_TRANSPARENT: %w", err)
		}
		// A dual-stack socket also serves IPv4; the IPv4 option is refused on some kernels
		// for IPV6_V6ONLY sockets, which is harmless.
		_ = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	default:
		return fmt.Errorf("setting IP_TRANSPARENT: socket domain %d is not IPv4 or IPv6", domain)
	}
	return nil
}

// Control is a net.Dialer.Control / net.ListenConfig.Control function that marks the socket
// with ZtunnelMark and makes it transparent, as the data-plane contract requires of every
// socket ztunnel opens inside a pod netns.
func Control(network, address string, c syscall.RawConn) error {
	return control(network, address, c, false)
}

// control applies Control's options, and SO_REUSEPORT when reusePort is set, in one pass over
// the socket.
func control(network, address string, c syscall.RawConn, reusePort bool) error {
	var opErr error
	err := c.Control(func(fd uintptr) {
		if opErr = Mark(int(fd), ZtunnelMark); opErr != nil {
			return
		}
		if opErr = Transparent(int(fd)); opErr != nil || !reusePort {
			return
		}
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			opErr = fmt.Errorf("setting SO_REUSEPORT: %w", err)
		}
	})
	if err != nil {
		return fmt.Errorf("controlling %s socket for %s: %w", network, address, err)
	}
	if opErr != nil {
		return fmt.Errorf("preparing %s socket for %s: %w", network, address, opErr)
	}
	return nil
}

// ListenConfig returns the ListenConfig for ztunnel's listeners inside a pod netns: Control
// applied, SO_REUSEPORT set and MPTCP disabled (an MPTCP socket cannot enter a BPF sockmap).
//
// SO_REUSEPORT is what lets two ztunnels overlap on a node during a rolling update (the chart's
// maxSurge 1; DESIGN.md section 5): the new one opens its listeners in every enrolled pod while
// the old one still holds the same ports, and the kernel spreads new connections over both until
// the old one closes its listeners to drain (what they had queued moves to the new one's: the
// CNI agent sets net.ipv4.tcp_migrate_req in the pod netns). Without it the new ztunnel's
// listen failed with "address already in use", it refused every replayed pod, and once the old
// one stopped, the node's captured traffic had nowhere to go. The kernel admits only sockets of
// the same user to the group, which ztunnel's listeners are (root); a pod's process running as
// root could join it too, as it could bind the ports whenever ztunnel is not listening.
func ListenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{Control: listenControl}
	lc.SetMultipathTCP(false)
	return lc
}

// listenControl is Control plus SO_REUSEPORT, for listeners.
func listenControl(network, address string, c syscall.RawConn) error {
	return control(network, address, c, true)
}

// OriginalDst returns the destination the client of a captured connection dialled. It asks
// conntrack (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for IPv6) and, when no NAT entry exists
// (the connection was delivered by TPROXY or bpf_sk_assign, or not redirected at all), falls
// back to the connection's local address, which is then the original destination.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	local, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, errors.New("reading original destination: connection has no local address")
	}
	localAP := local.AddrPort()
	localAP = netip.AddrPortFrom(localAP.Addr().Unmap(), localAP.Port())
	rc, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination: %w", err)
	}
	var (
		dst   netip.AddrPort
		gsErr error
	)
	err = rc.Control(func(fd uintptr) { dst, gsErr = getOriginalDst(int(fd), localAP.Addr().Is4()) })
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination: %w", err)
	}
	switch {
	case gsErr == nil:
		return dst, nil
	case errors.Is(gsErr, unix.ENOENT), errors.Is(gsErr, unix.ENOPROTOOPT), errors.Is(gsErr, unix.EOPNOTSUPP):
		// No conntrack entry, or conntrack not loaded: nothing rewrote the destination.
		return localAP, nil
	default:
		return netip.AddrPort{}, fmt.Errorf("reading original destination: %w", gsErr)
	}
}

func getOriginalDst(fd int, v4 bool) (netip.AddrPort, error) {
	if v4 {
		var sa unix.RawSockaddrInet4
		size := uint32(unsafe.Sizeof(sa))
		if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &size); err != nil {
			// A dual-stack socket carrying IPv4 still answers at SOL_IP; nothing else to try.
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), nil
	}
	var sa unix.RawSockaddrInet6
	size := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &size); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port)), nil
}

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// ntohs converts a port as stored in a sockaddr (network byte order) to a number.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
