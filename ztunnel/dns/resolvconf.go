package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// ErrNoNameservers is returned by [ParseResolvConf] when the file lists no nameserver.
var ErrNoNameservers = errors.New("resolv.conf lists no nameserver")

// ReadResolvConf reads the nameservers of a resolv.conf file (usually /etc/resolv.conf) as
// upstreams on port 53, in file order.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading nameservers: %w", err)
	}
	defer f.Close()
	ups, err := ParseResolvConf(f)
	if err != nil {
		return nil, fmt.Errorf("reading nameservers from %s: %w", path, err)
	}
	return ups, nil
}

// ParseResolvConf parses the "nameserver" lines of resolv.conf text. Lines it does not
// understand are ignored, as the C library does; an unparsable nameserver address is an error.
func ParseResolvConf(r io.Reader) ([]netip.AddrPort, error) {
	var ups []netip.AddrPort
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: nameserver %q is not an IP address: %w", line, f[1], err)
		}
		ups = append(ups, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parsing resolv.conf: %w", err)
	}
	if len(ups) == 0 {
		return nil, ErrNoNameservers
	}
	return ups, nil
}
