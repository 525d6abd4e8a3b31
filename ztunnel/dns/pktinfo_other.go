//go:build !linux

package dns

import (
	"net"
	"net/netip"
)

// Other systems answer from whatever source the kernel picks; see pktinfo_linux.go.

func enablePktinfo(*net.UDPConn) bool { return false }

func packetDst([]byte) netip.Addr { return netip.Addr{} }

func sourceOOB(netip.Addr) []byte { return nil }
