package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/after"
)

func newRedirector(t testing.TB) *Redirector {
	t.Helper()
	r, err := New(Options{PinDir: pinDir(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// check is one connection and the first word and original destination its server must report.
type check struct {
	name    string
	from    string // "pod" or "peer"
	dst     netip.AddrPort
	opts    dialOpts
	want    string // "<server> <destination it saw>"
	wantSrc string // if set, the source address the server saw
}

func runChecks(t *testing.T, tp *topo, checks []check) {
	t.Helper()
	for _, c := range checks {
		h := tp.pod
		if c.from == "peer" {
			h = tp.peer
		}
		line, err := hello(h, c.dst, c.opts)
		if err != nil {
			t.Errorf("%s: dial %s: %v", c.name, c.dst, err)
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Errorf("%s: got %q, want three fields", c.name, line)
			continue
		}
		if got := f[0] + " " + f[1]; got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
		if c.wantSrc != "" && !strings.HasPrefix(f[2], c.wantSrc+":") {
			t.Errorf("%s: server saw source %s, want %s", c.name, f[2], c.wantSrc)
		}
	}
}

// captured are the contract's checks with the redirection in place.
var captured = []check{
	{name: "outbound to a remote service reaches 15001", from: "pod", dst: ap(remoteIP, remotePort),
		want: "ztunnel:15001 10.88.0.5:80", wantSrc: podIP.String()},
	{name: "outbound to a peer on the pod subnet reaches 15001", from: "pod", dst: ap(peerIP, 9),
		want: "ztunnel:15001 10.77.0.1:9"},
	{name: "outbound DNS over TCP reaches 15053", from: "pod", dst: ap(dnsIP, 53),
		want: "ztunnel:15053 10.88.0.53:53"},
	{name: "loopback is not captured", from: "pod", dst: ap(netip.MustParseAddr("127.0.0.1"), appPort),
		want: "app 127.0.0.1:8080"},
	{name: "the pod's own IP is not captured", from: "pod", dst: ap(podIP, appPort),
		want: "app 10.77.0.2:8080"},
	{name: "ztunnel's marked sockets bypass", from: "pod", dst: ap(remoteIP, remotePort),
		opts: dialOpts{mark: true}, want: "remote 10.88.0.5:80"},
	{name: "inbound to the app's port reaches 15006", from: "peer", dst: ap(podIP, appPort),
		want: "ztunnel:15006 10.77.0.2:8080", wantSrc: peerIP.String()},
	{name: "inbound to a closed port reaches 15006", from: "peer", dst: ap(podIP, 9999),
		want: "ztunnel:15006 10.77.0.2:9999"},
	{name: "inbound 15008 reaches 15008", from: "peer", dst: ap(podIP, 15008),
		want: "ztunnel:15008 10.77.0.2:15008"},
	{name: "kubelet probes bypass", from: "peer", dst: ap(podIP, appPort), opts: dialOpts{bind: probeIP},
		want: "app 10.77.0.2:8080", wantSrc: probeIP.String()},
	{name: "ztunnel's spoofed inbound delivery gets its replies", from: "pod", dst: ap(podIP, appPort),
		opts: dialOpts{mark: true, transparent: true, bind: spoofedIP}, want: "app 10.77.0.2:8080", wantSrc: spoofedIP.String()},
}

// direct are the same connections without redirection.
var direct = []check{
	{name: "outbound", from: "pod", dst: ap(remoteIP, remotePort), want: "remote 10.88.0.5:80"},
	{name: "outbound DNS over TCP", from: "pod", dst: ap(dnsIP, 53), want: "dns-server-tcp 10.88.0.53:53"},
	{name: "inbound", from: "peer", dst: ap(podIP, appPort), want: "app 10.77.0.2:8080"},
	{name: "loopback", from: "pod", dst: ap(netip.MustParseAddr("127.0.0.1"), appPort), want: "app 127.0.0.1:8080"},
}

func TestRedirection(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	r := newRedirector(t)

	runChecks(t, tp, direct)
	// The set New loads ahead is the Redirector's own, like the one Attach loads after it.
	dropSpare(r)
	fds := openFds(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	// The spare set loaded for the next pod is the Redirector's own, not the pod's.
	dropSpare(r)
	// Other goroutines of the test binary (the test servers ending connections) may open or
	// close descriptors meanwhile: only a count that stays higher is a leak.
	got := openFds(t)
	for deadline := time.Now().Add(2 * time.Second); got > fds && time.Now().Before(deadline); got = openFds(t) {
		time.Sleep(20 * time.Millisecond)
	}
	if got > fds {
		t.Errorf("Attach left %d file descriptors open, want 0: the kernel, not the process, must hold what it attached", got-fds)
	}
	t.Run("captured", func(t *testing.T) { runChecks(t, tp, captured) })
	t.Run("dns over udp", func(t *testing.T) {
		got, err := query(tp.pod, ap(dnsIP, 53), "q1")
		if want := "dns q1"; err != nil || got != want {
			t.Errorf("query %s: got %q, %v; want %q from ztunnel, with the source the app asked", dnsIP, got, err, want)
		}
		got, err = query(tp.pod, ap(remoteIP, 5353), "q2")
		if want := ""; err == nil || got != want {
			t.Errorf("udp to a port other than 53: got %q, %v; want no answer (nothing listens on the peer)", got, err)
		}
	})

	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	t.Run("detached", func(t *testing.T) {
		runChecks(t, tp, direct)
		got, err := query(tp.pod, ap(dnsIP, 53), "q3")
		if want := "dns-server q3"; err != nil || got != want {
			t.Errorf("query after Detach: got %q, %v; want %q", got, err, want)
		}
	})
	left, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("after Detach, left behind:\n%s", strings.Join(left, "\n"))
	}
	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Errorf("second Detach: %v", err)
	}
}

// TestReconcile: Attach again, from a new Redirector as after an agent restart, changes
// nothing, and a stale program or rule is replaced.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	r := newRedirector(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	first, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := 10; len(first) != want { // 3 programs, 1 sysctl, 5 rules, 1 route
		t.Errorf("installed %d objects, want %d:\n%s", len(first), want, strings.Join(first, "\n"))
	}
	again, err := New(Options{PinDir: r.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("second Attach: %v", err)
	}
	second, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first, second) {
		t.Errorf("second Attach changed the install:\nbefore:\n%s\nafter:\n%s", strings.Join(first, "\n"), strings.Join(second, "\n"))
	}

	// Another version's programs (another tag) and a rule out of place.
	stale := *r
	stale.tags = map[string]string{}
	run(t, tp.pod, "ip", "rule", "del", "pref", fmt.Sprint(prefFirst+2))
	if err := stale.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach over stale install: %v", err)
	}
	third, err := r.Installed(ctx, tp.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(third) != len(first) || slices.Equal(first, third) {
		t.Errorf("Attach over a stale install: got\n%s\nwant the same objects with new program ids", strings.Join(third, "\n"))
	}
	runChecks(t, tp, captured)
	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Fatal(err)
	}
	if left, _ := r.Installed(ctx, tp.podPath); len(left) != 0 {
		t.Errorf("after Detach, left behind:\n%s", strings.Join(left, "\n"))
	}
}

// TestDetachGoneNetns: a netns that died without Detach leaves only a pin, which the next
// Detach (of any netns) removes.
func TestDetachGoneNetns(t *testing.T) {
	ctx := context.Background()
	r := newRedirector(t)
	pod, path := newNetNS(t)
	run(t, pod, "ip", "link", "set", "lo", "up")
	run(t, pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	run(t, pod, "ip", "addr", "add", podIP.String()+"/24", "dev", "eth0")
	run(t, pod, "ip", "link", "set", "eth0", "up")
	if err := r.Attach(ctx, path, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	pins := func() []string {
		m, _ := filepath.Glob(filepath.Join(r.pinDir, "netns-*"))
		return m
	}
	if got := pins(); len(got) != 1 {
		t.Fatalf("pins after Attach: got %v, want one", got)
	}
	pod.Close()
	killHolder(t, path)
	if err := r.Detach(ctx, path); err != nil {
		t.Errorf("Detach of a gone netns: %v, want nil", err)
	}
	// The kernel releases a dead netns asynchronously.
	deadline := time.Now().Add(10 * time.Second)
	for len(pins()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		r.gc()
	}
	if got := pins(); len(got) != 0 {
		t.Errorf("pins left after the netns died: %v", got)
	}
}

// TestEstablishedConnectionsSurvive: connections open before Attach, in and out, keep
// working; only new ones are captured.
func TestEstablishedConnectionsSurvive(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	startApps(t, tp)
	startZtunnel(t, tp)
	echo(t, tp.pod, "0.0.0.0:7")
	echo(t, tp.peer, "0.0.0.0:7")
	out, err := tp.pod.DialContext(ctx, "tcp4", ap(remoteIP, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := tp.peer.DialContext(ctx, "tcp4", ap(podIP, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	for _, c := range []net.Conn{out, in} {
		if err := roundTrip(c, "before"); err != nil {
			t.Fatalf("before Attach: %v", err)
		}
	}
	r := newRedirector(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	big := strings.Repeat("x", 200<<10) // many segments, past any window
	for name, c := range map[string]net.Conn{"outbound": out, "inbound": in} {
		if err := roundTrip(c, "after"); err != nil {
			t.Errorf("%s connection after Attach: %v", name, err)
		}
		if err := roundTrip(c, big); err != nil {
			t.Errorf("%s connection after Attach, 200 KiB: %v", name, err)
		}
	}
	runChecks(t, tp, captured[:1])
	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Fatal(err)
	}
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNewNeedsBPFFS: a pin directory that is not on a bpffs is reported as not supported,
// which makes the agent fall back to nftables with the reason.
func TestNewNeedsBPFFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading eBPF needs root (CI runs as root)")
	}
	_, err := New(Options{PinDir: filepath.Join(t.TempDir(), "ambit")})
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "bpffs") {
		t.Errorf("New with a pin directory on tmpfs: got %v, want an error wrapping ErrNotSupported naming bpffs", err)
	}
}

// TestSockmapsCarryNoBTF: New drops the BTF of sockmaps, whose refusal by the kernel costs an
// RCU grace period per pod (see dropSockmapBTF and BenchmarkLoadSet).
func TestSockmapsCarryNoBTF(t *testing.T) {
	r := newRedirector(t)
	n := 0
	for prog, cs := range r.specs {
		for name, m := range cs.Maps {
			if m.Type == ebpf.SockMap && (m.Key != nil || m.Value != nil) {
				t.Errorf("program %s: sockmap %s still has BTF key/value types", prog, name)
			}
			if m.Type == ebpf.SockMap {
				n++
			}
		}
	}
	if n == 0 {
		t.Error("no sockmap in the programs' specs: the test checks nothing")
	}
}

// BenchmarkLoadSet loads one pod's programs and maps, as Attach does for a new pod, and the
// same with the sockmaps' BTF kept (what cilium/ebpf does by default) as the baseline:
//
//	go test -run '^$' -bench BenchmarkLoadSet ./bpf
func BenchmarkLoadSet(b *testing.B) {
	r := newRedirector(b)
	var err error
	withBTF := &Redirector{specs: map[string]*ebpf.CollectionSpec{}}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		progInbound: loadInbound, progOutbound: loadOutbound, progLookup: loadSkLookup,
	} {
		if withBTF.specs[name], err = load(); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		r    *Redirector
	}{{"sockmap-BTF-dropped", r}, {"sockmap-BTF-kept", withBTF}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				s, err := c.r.loadSet()
				if err != nil {
					b.Fatal(err)
				}
				s.close()
			}
		})
	}
}

// TestForeignFiltersKept: another tool's tc filter on the pod's interface stays through Attach
// and Detach, and so does the clsact qdisc it needs; our own filter runs first (priority 1).
func TestForeignFiltersKept(t *testing.T) {
	ctx := context.Background()
	tp := newTopo(t)
	foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "foreign", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TC_ACT_UNSPEC
	})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	filters := func() string {
		var out string
		tp.pod.Do(func() error {
			b, err := exec.Command("tc", "filter", "show", "dev", "eth0", "ingress").CombinedOutput()
			out = string(b)
			return err
		})
		return out
	}
	if err := tp.pod.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.QdiscAdd(clsact(ifc.Index)); err != nil {
			return err
		}
		return netlink.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: ifc.Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 100, Handle: 1, Protocol: unix.ETH_P_ALL},
			Fd:          foreign.FD(), Name: "foreign", DirectAction: true,
		})
	}); err != nil {
		t.Fatalf("adding the foreign filter: %v", err)
	}
	r := newRedirector(t)
	if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	during := filters()
	first, foreignAt := strings.Index(during, progInbound), strings.Index(during, "foreign")
	if first < 0 || foreignAt < 0 || first > foreignAt {
		t.Errorf("tc filters on eth0 after Attach:\n%s\nwant %s first, then the foreign one", during, progInbound)
	}
	if err := r.Detach(ctx, tp.podPath); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if after := filters(); strings.Contains(after, progInbound) || !strings.Contains(after, "foreign") {
		t.Errorf("tc filters on eth0 after Detach:\n%s\nwant only the foreign one", after)
	}
}

// dropSpare waits for r's background load to end and closes the spare set it made.
func dropSpare(r *Redirector) {
	for r.refilling.Load() {
		time.Sleep(time.Millisecond)
	}
	select {
	case s := <-r.spare:
		s.close()
	default:
	}
}

// TestSpareSet: New loads the first pod's programs in the background, and each Attach, once
// done, the next pod's; every pod's Attach uses the set loaded ahead for it.
func TestSpareSet(t *testing.T) {
	ctx := context.Background()
	r := newRedirector(t)
	pods := []*topo{newTopo(t), newTopo(t)}
	for i, tp := range pods {
		id := spareOutboundID(t, r)
		if err := r.Attach(ctx, tp.podPath, []netip.Addr{podIP}); err != nil {
			t.Fatalf("Attach of pod %d: %v", i, err)
		}
		got, err := r.Installed(ctx, tp.podPath)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("tc ingress lo: program %s id %d", progOutbound, id)
		if !slices.Contains(got, want) {
			t.Errorf("pod %d's install:\n%s\nwant the spare set's outbound program: %q", i, strings.Join(got, "\n"), want)
		}
	}
	for _, tp := range pods {
		if err := r.Detach(ctx, tp.podPath); err != nil {
			t.Errorf("Detach: %v", err)
		}
	}
	dropSpare(r)
}

// spareOutboundID waits until r has a spare set and returns its outbound program's id.
func spareOutboundID(t *testing.T, r *Redirector) ebpf.ProgramID {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.spare) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no spare set loaded within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s := <-r.spare
	defer func() { r.spare <- s }()
	info, err := s.out.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// TestSpareSetAfterReply: under a request's context (a CNI ADD in the agent), Attach leaves
// loading the next set until the request's answer has been sent.
func TestSpareSetAfterReply(t *testing.T) {
	r := newRedirector(t)
	tp := newTopo(t)
	spareOutboundID(t, r) // New's set, which this Attach takes
	q := &after.Queue{}
	if err := r.Attach(after.With(context.Background(), q), tp.podPath, []netip.Addr{podIP}); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if len(r.spare) > 0 || r.refilling.Load() {
		t.Error("the next set was loading or loaded before the answer was sent")
	}
	q.Run()
	spareOutboundID(t, r)
	if err := r.Detach(context.Background(), tp.podPath); err != nil {
		t.Errorf("Detach: %v", err)
	}
	dropSpare(r)
}
