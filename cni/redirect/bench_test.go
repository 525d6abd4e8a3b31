package redirect_test

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// BenchmarkEnroll times one pod's Enroll per backend, in a fresh netns with lo and a veth
// (made and removed outside the timer), as the agent's ADD runs it:
//
//	go test -run '^$' -bench BenchmarkEnroll ./cni/redirect
func BenchmarkEnroll(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root to create network namespaces (CI runs as root)")
	}
	nft, err := redirect.NewNFTables()
	if err != nil {
		b.Fatal(err)
	}
	ebpf, err := redirect.NewEBPFAt(privateBPFFS(b))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, be := range []redirect.Backend{nft, ebpf} {
		b.Run(be.Name(), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				n := testutil.NewNetNS(b, "bench")
				n.Run(b, "ip", "link", "set", "lo", "up")
				n.Run(b, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
				n.Run(b, "ip", "link", "set", "eth0", "up")
				n.Run(b, "ip", "addr", "add", "10.1.1.2/24", "dev", "eth0")
				p := redirect.Pod{UID: "uid", Namespace: "ns", Name: "pod", Netns: n.Path, IPs: []netip.Addr{netip.MustParseAddr("10.1.1.2")}}
				b.StartTimer()
				if err := be.Enroll(ctx, p); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := be.Unenroll(ctx, p); err != nil {
					b.Fatal(err)
				}
				n.Handle.Close()
				n.Kill()
				b.StartTimer()
			}
		})
	}
}
