package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/bpf"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/zds"
)

// failOpenPod is one pod of the netns test: its own netns joined to the peer by a veth pair.
type failOpenPod struct {
	name, uid string
	ip, peer  string // the pod's address and the peer's end of its link
	ns        *testutil.NetNS
}

// TestFailOpenInNetns runs the agent with each real backend on two pods in real network
// namespaces, one annotated fail-open: while ztunnel is connected both reach its listener;
// once ztunnel has been gone past the grace period the fail-open pod reaches the peer
// directly, with nothing of the capture left in its netns, while the other pod's connections
// fail; when ztunnel returns both are captured again.
func TestFailOpenInNetns(t *testing.T) {
	for _, tc := range []struct {
		name string
		// new returns the backend and, for eBPF, what package bpf finds installed in a netns.
		new func(t *testing.T) (redirect.Backend, func(ctx context.Context, netnsPath string) ([]string, error))
	}{
		{"nftables", func(t *testing.T) (redirect.Backend, func(context.Context, string) ([]string, error)) {
			b, err := redirect.NewNFTables()
			if err != nil {
				t.Fatal(err)
			}
			return b, nil
		}},
		{"ebpf", func(t *testing.T) (redirect.Backend, func(context.Context, string) ([]string, error)) {
			dir := filepath.Join(testutil.PrivateBPFFS(t), "ambit")
			b, err := redirect.NewEBPFAt(dir)
			if errors.Is(err, redirect.ErrNotSupported) {
				t.Skipf("skipping: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := bpf.New(bpf.Options{PinDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			return b, r.Installed
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t) // skips without root
			backend, installed := tc.new(t)
			testFailOpenInNetns(t, h, backend, installed)
		})
	}
}

func testFailOpenInNetns(t *testing.T, h *harness, backend redirect.Backend, installed func(context.Context, string) ([]string, error)) {
	ctx := context.Background()
	peer := testutil.NewNetNS(t, "peer")
	pods := []*failOpenPod{
		{name: "open", uid: "uid-open", ip: "10.66.0.2", peer: "10.66.0.1"},
		{name: "closed", uid: "uid-closed", ip: "10.67.0.2", peer: "10.67.0.1"},
	}
	for i, p := range pods {
		p.ns = testutil.NewNetNS(t, p.name)
		peerLink := fmt.Sprintf("peer%d", i)
		p.ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", peerLink, "netns", fmt.Sprint(peer.PID))
		for _, c := range [][]string{
			{"ip", "link", "set", "eth0", "addrgenmode", "none"}, {"ip", "link", "set", "lo", "up"},
			{"ip", "link", "set", "eth0", "up"}, {"ip", "addr", "add", p.ip + "/24", "dev", "eth0"},
			{"ip", "route", "add", "default", "via", p.peer},
		} {
			p.ns.Run(t, c...)
		}
		peer.Run(t, "ip", "link", "set", peerLink, "addrgenmode", "none")
		peer.Run(t, "ip", "link", "set", peerLink, "up")
		peer.Run(t, "ip", "addr", "add", p.peer+"/24", "dev", peerLink)
	}
	ln, err := peer.Handle.Listen(ctx, &net.ListenConfig{}, "tcp4", "0.0.0.0:80")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "peer")
			c.Close()
		}
	})
	dial := func(p *failOpenPod) string {
		line, err := dialFirstLine(p.ns.Handle, p.peer+":80")
		if err != nil {
			return "error: " + err.Error()
		}
		return line
	}
	clean := map[string]string{}
	for i, p := range pods {
		clean[p.name] = podNetnsState(t, p.ns)
		fakeProc(t, h.cfg.ProcRoot, fmt.Sprint(300+i), p.uid, p.ns.Path)
		pod := testPod(p.name, p.uid, p.ip, map[string]string{"istio.io/dataplane-mode": "ambient"})
		if p.name == "open" {
			pod.Annotations = map[string]string{FailOpenAnnotation: "true"}
		}
		if _, err := h.client.CoreV1().Pods("demo").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	h.cfg.FailOpenGrace = time.Second
	a, err := New(h.cfg, h.client, backend, nil)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
	}()
	stopZ1 := runListeningZtunnel(t, h.cfg.ZDSSocket)
	for _, p := range pods {
		waitFor(t, p.name+" captured", func() bool { return h.annotation(t, p.name) == "enabled" })
		if got, want := dial(p), "ztunnel "+p.peer+":80 <nil>"; got != want {
			t.Fatalf("pod %s with ztunnel connected reached %q; want %q", p.name, got, want)
		}
	}

	stopZ1()
	waitFor(t, "the fail-open pod to bypass capture", func() bool {
		return h.annotations(t, "open")[RedirectionAnnotation] == "bypassed"
	})
	open, closed := pods[0], pods[1]
	if got := dial(open); got != "peer" {
		t.Errorf("bypassed fail-open pod reached %q; want the peer directly", got)
	}
	if got := podNetnsState(t, open.ns); got != clean["open"] {
		t.Errorf("the bypassed pod's netns differs from before its enrolment:\n%s\nwant:\n%s", got, clean["open"])
	}
	if installed != nil {
		if left, err := installed(ctx, open.ns.Path); err != nil || len(left) > 0 {
			t.Errorf("eBPF redirection left in the bypassed pod: %q, %v", left, err)
		}
	}
	if got := dial(closed); !strings.HasPrefix(got, "error: ") {
		t.Errorf("fail-closed pod with ztunnel gone reached %q; want its connection to fail", got)
	}
	if got := podNetnsState(t, closed.ns); got == clean["closed"] {
		t.Errorf("the fail-closed pod lost its capture while ztunnel was gone:\n%s", got)
	}
	if got := h.annotation(t, "closed"); got != "enabled" {
		t.Errorf("fail-closed pod's annotation while ztunnel is gone = %q; want enabled", got)
	}

	runListeningZtunnel(t, h.cfg.ZDSSocket)
	waitFor(t, "the fail-open pod to be captured again", func() bool {
		a := h.annotations(t, "open")
		return a["ambient.istio.io/redirection"] == "enabled" && a[RedirectionAnnotation] == ""
	})
	for _, p := range pods {
		if got, want := dial(p), "ztunnel "+p.peer+":80 <nil>"; got != want {
			t.Errorf("pod %s after ztunnel returned reached %q; want %q", p.name, got, want)
		}
	}
}

// runListeningZtunnel connects a listeningZtunnel to the agent; stop disconnects it and closes
// its listeners, as a ztunnel that exits does.
func runListeningZtunnel(t *testing.T, path string) (stop func()) {
	z := &listeningZtunnel{lns: map[string]net.Listener{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); zds.RunClient(ctx, path, z, nil) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; z.close() }) }
	t.Cleanup(stop)
	return stop
}

// dialFirstLine connects from inside h to addr and returns the first line the server sends.
func dialFirstLine(h *netns.Handle, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// podNetnsState describes what a backend could have installed in a pod netns: nftables,
// ip rules, routes of every table, the sysctl the eBPF backend sets, qdiscs and tc filters.
func podNetnsState(t *testing.T, n *testutil.NetNS) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"nft", "list", "ruleset"},
		{"ip", "-4", "rule", "show"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"sysctl", "net.ipv4.conf.eth0.src_valid_mark"},
		{"tc", "qdisc", "show"},
		{"tc", "filter", "show", "dev", "lo", "ingress"},
		{"tc", "filter", "show", "dev", "eth0", "ingress"},
	} {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), n.Run(t, args...))
	}
	return b.String()
}
