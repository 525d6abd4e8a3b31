package dns_test

import (
	"context"
	"net"
	"net/netip"

	"github.com/ambit-mesh/ambit/ztunnel/dns"
)

// How ztunnel runs one pod's proxy: the sockets come from inside the pod's network namespace,
// the upstreams from ztunnel's own resolv.conf.
func Example() {
	ctx := context.Background()
	upstreams, err := dns.ReadResolvConf("/etc/resolv.conf")
	if err != nil {
		return
	}
	s, err := dns.New(dns.Config{
		Resolver: dns.ResolverFunc(func(name string) ([]netip.Addr, bool) {
			if name == "reviews.default.svc.cluster.local" {
				return []netip.Addr{netip.MustParseAddr("10.96.0.20")}, true
			}
			return nil, false
		}),
		Upstreams: upstreams,
	})
	if err != nil {
		return
	}
	pc, _ := net.ListenPacket("udp4", "0.0.0.0:15053") // ztunnel: made inside the pod netns, marked, transparent
	ln, _ := net.Listen("tcp4", "0.0.0.0:15053")
	_ = s.Serve(ctx, pc, ln) // returns when ctx ends
}
