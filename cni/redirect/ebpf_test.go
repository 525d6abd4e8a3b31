package redirect_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/cni/redirect/redirecttest"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestEBPFContract(t *testing.T) {
	redirecttest.Run(t, func(t *testing.T) redirect.Backend {
		dir := privateBPFFS(t)
		b, err := redirect.NewEBPFAt(dir)
		if errors.Is(err, redirect.ErrNotSupported) {
			t.Skipf("skipping: %v", err)
		}
		if err != nil {
			t.Fatalf("NewEBPFAt: %v", err)
		}
		r, err := bpf.New(bpf.Options{PinDir: dir})
		if err != nil {
			t.Fatalf("bpf.New: %v", err)
		}
		return &leftoverCheck{Backend: b, t: t, r: r}
	})
}

// leftoverCheck adds to the contract test's snapshot what only package bpf can list (the
// programs on lo and the src_valid_mark sysctls): after each Unenroll nothing may be left.
type leftoverCheck struct {
	redirect.Backend
	t *testing.T
	r *bpf.Redirector
}

func (l *leftoverCheck) Unenroll(ctx context.Context, p redirect.Pod) error {
	if err := l.Backend.Unenroll(ctx, p); err != nil {
		return err
	}
	left, err := l.r.Installed(ctx, p.Netns)
	if err != nil {
		l.t.Errorf("listing what is left after Unenroll: %v", err)
	} else if len(left) > 0 {
		l.t.Errorf("after Unenroll, left in the pod netns:\n%s", strings.Join(left, "\n"))
	}
	return nil
}

// privateBPFFS returns a directory on a bpffs mounted in a mount namespace of its own (held
// by a process, reached through /proc/PID/root), so the machine's mounts stay untouched and
// the pins vanish with the test.
func privateBPFFS(t testing.TB) string {
	t.Helper()
	return filepath.Join(testutil.PrivateBPFFS(t), "ambit")
}

// BenchmarkConnections measures new TCP connections per second (connect, accept, close)
// through a pod netns without capture and with each backend: inbound from a peer netns to the
// pod's app port, and outbound from the pod to the peer. Captured connections end at a fake
// ztunnel listener in the pod, direct ones at the app or the peer, all with the same server
// code. The three set-ups exist side by side and each round (one b.N) times a batch of
// connections through each in turn, so that load from elsewhere on the machine hits all alike;
// the metrics are medians over the rounds and their ratios to direct.
// Run: go test -run '^$' -bench Connections -benchtime 15x ./cni/redirect/
func BenchmarkConnections(b *testing.B) {
	const batch = 200
	variants := []struct {
		name string
		new  func(b *testing.B) redirect.Backend
	}{
		{"direct", nil},
		{"ebpf", func(b *testing.B) redirect.Backend {
			be, err := redirect.NewEBPFAt(privateBPFFS(b))
			if err != nil {
				b.Fatal(err)
			}
			return be
		}},
		{"nftables", func(b *testing.B) redirect.Backend {
			be, err := redirect.NewNFTables()
			if err != nil {
				b.Fatal(err)
			}
			return be
		}},
	}
	for _, dir := range []string{"inbound", "outbound"} {
		b.Run(dir, func(b *testing.B) {
			type setup struct {
				from *netns.Handle
				addr string
				secs []float64 // per batch
			}
			setups := make([]*setup, len(variants))
			for i, v := range variants {
				pod, peer := benchTopology(b)
				plain := &net.ListenConfig{}
				plain.SetMultipathTCP(false) // as ztunnel's: Go listeners default to MPTCP
				closeOnAccept(b, pod.h, sockopt.ListenConfig(), "0.0.0.0:15001")
				closeOnAccept(b, pod.h, sockopt.ListenConfig(), "0.0.0.0:15006")
				closeOnAccept(b, pod.h, plain, "0.0.0.0:8080")
				closeOnAccept(b, peer.h, plain, "10.77.0.1:80")
				if v.new != nil {
					backend := v.new(b)
					p := redirect.Pod{Namespace: "bench", Name: v.name, Netns: pod.path, IPs: []netip.Addr{netip.MustParseAddr("10.77.0.2")}}
					if err := backend.Enroll(context.Background(), p); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { backend.Unenroll(context.Background(), p) })
				}
				setups[i] = &setup{from: peer.h, addr: "10.77.0.2:8080"}
				if dir == "outbound" {
					setups[i] = &setup{from: pod.h, addr: "10.77.0.1:80"}
				}
			}
			b.ResetTimer()
			for range b.N {
				for _, s := range setups {
					start := time.Now()
					if err := dialBatch(s.from, s.addr, batch); err != nil {
						b.Fatal(err)
					}
					s.secs = append(s.secs, time.Since(start).Seconds())
				}
			}
			b.StopTimer()
			direct := median(setups[0].secs)
			for i, v := range variants {
				m := median(setups[i].secs)
				b.ReportMetric(batch/m, v.name+"-conns/s")
				if i > 0 {
					b.ReportMetric(direct/m, v.name+"/direct")
				}
			}
		})
	}
}

// dialBatch opens and closes n connections to addr from inside h, one after the other.
func dialBatch(h *netns.Handle, addr string, n int) error {
	return h.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		buf := make([]byte, 1)
		for range n {
			c, err := d.Dial("tcp4", addr)
			if err != nil {
				return err
			}
			c.Read(buf) // EOF: the server closed
			c.Close()
		}
		return nil
	})
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

type benchNS struct {
	path string
	h    *netns.Handle
}

// benchTopology makes a pod netns (10.77.0.2/24, default via the peer) and a peer netns
// (10.77.0.1/24) joined by a veth pair.
func benchTopology(b *testing.B) (pod, peer benchNS) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root for network namespaces (CI runs as root)")
	}
	mk := func(name string) benchNS {
		n := testutil.NewNetNS(b, name)
		return benchNS{n.Path, n.Handle}
	}
	pod, peer = mk("pod"), mk("peer")
	run := func(ns benchNS, args ...string) {
		if out, err := exec.Command("nsenter", append([]string{"--net=" + ns.path}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", strings.TrimSuffix(strings.TrimPrefix(peer.path, "/proc/"), "/ns/net"))
	run(pod, "ip", "link", "set", "lo", "up")
	run(pod, "ip", "link", "set", "eth0", "up")
	run(pod, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	run(pod, "ip", "route", "add", "default", "via", "10.77.0.1")
	run(peer, "ip", "link", "set", "lo", "up")
	run(peer, "ip", "link", "set", "eth0", "up")
	run(peer, "ip", "addr", "add", "10.77.0.1/24", "dev", "eth0")
	return pod, peer
}

// closeOnAccept listens on addr inside h and closes every connection it accepts.
func closeOnAccept(b *testing.B, h *netns.Handle, lc *net.ListenConfig, addr string) {
	b.Helper()
	ln, err := h.Listen(context.Background(), lc, "tcp4", addr)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	b.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}
