package mesh

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
)

// flow is one direction of TCP traffic seen on the fabric.
type flow struct {
	src, dst netip.Addr
	dstPort  uint16
}

// tcpFlows reads a pcap file of Ethernet frames (as cluster.Capture writes it) and counts the
// IPv4 TCP frames of each flow.
func tcpFlows(path string) (map[flow]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		return nil, fmt.Errorf("%s: not a little-endian pcap file", path)
	}
	flows := map[flow]int{}
	for off := 24; off+16 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		frame := b[off+16 : min(off+16+n, len(b))]
		off += 16 + n
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 6 || len(ip) < ihl+4 {
			continue
		}
		f := flow{netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(ip[ihl+2:])}
		flows[f]++
	}
	return flows, nil
}
