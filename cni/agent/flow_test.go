package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
	"github.com/ambit-mesh/ambit/internal/zds"
)

// listeningZtunnel opens ztunnel's outbound listener inside every netns it is given, as the
// real ztunnel does, and answers each captured connection with its original destination.
type listeningZtunnel struct {
	mu  sync.Mutex // guards lns
	lns map[string]net.Listener
	wg  sync.WaitGroup
}

func (z *listeningZtunnel) AddWorkload(ctx context.Context, uid string, _ *zds.WorkloadInfo, h *netns.Handle) error {
	defer h.Close()
	ln, err := h.Listen(ctx, sockopt.ListenConfig(), "tcp4", fmt.Sprintf("0.0.0.0:%d", redirect.OutboundPort))
	if err != nil {
		return err
	}
	z.mu.Lock()
	z.lns[uid] = ln
	z.mu.Unlock()
	z.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, err := sockopt.OriginalDst(c.(*net.TCPConn))
			fmt.Fprintf(c, "ztunnel %s %v\n", dst, err)
			c.Close()
		}
	})
	return nil
}

func (z *listeningZtunnel) KeepWorkload(context.Context, string) error { return nil }
func (z *listeningZtunnel) SnapshotSent(context.Context) error         { return nil }
func (z *listeningZtunnel) Connected(context.Context) error            { return nil }

func (z *listeningZtunnel) DelWorkload(_ context.Context, uid string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if ln := z.lns[uid]; ln != nil {
		ln.Close()
		delete(z.lns, uid)
	}
	return nil
}

func (z *listeningZtunnel) close() {
	z.mu.Lock()
	for _, ln := range z.lns {
		ln.Close()
	}
	z.mu.Unlock()
	z.wg.Wait()
}

// TestNewPodThroughThePluginBinary runs the whole node path: the ambit-cni binary, exec'd the
// way containerd does, calls the agent, which hands the pod netns to a ztunnel that listens
// there and installs the real nftables rules; the pod's traffic then reaches that ztunnel.
// DEL through the binary restores direct traffic.
func TestNewPodThroughThePluginBinary(t *testing.T) {
	h := newHarness(t)
	b, err := redirect.NewNFTables()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pod := testPod("web", "uid-web", "", map[string]string{"istio.io/dataplane-mode": "ambient"})
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
	if _, err := h.client.CoreV1().Pods("demo").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The pod and a peer joined by a veth pair; the peer serves on 10.66.0.1:80.
	podNS, peerNS := holdNetns(t), holdNetns(t)
	peerPid := strings.TrimSuffix(strings.TrimPrefix(peerNS, "/proc/"), "/ns/net")
	nsRun(t, podNS, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", peerPid)
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"}, {"ip", "link", "set", "eth0", "up"},
		{"ip", "addr", "add", "10.66.0.2/24", "dev", "eth0"}, {"ip", "route", "add", "default", "via", "10.66.0.1"},
	} {
		nsRun(t, podNS, c...)
	}
	nsRun(t, peerNS, "ip", "link", "set", "peer0", "up")
	nsRun(t, peerNS, "ip", "addr", "add", "10.66.0.1/24", "dev", "peer0")
	ph, err := netns.Open(peerNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	peerLn, err := ph.Listen(ctx, &net.ListenConfig{}, "tcp4", "10.66.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go func() {
		for {
			c, err := peerLn.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "peer")
			c.Close()
		}
	}()
	podDial := func() string {
		out, err := exec.Command("nsenter", "--net="+podNS, "timeout", "5", "bash", "-c",
			`exec 3<>/dev/tcp/10.66.0.1/80 && head -n1 <&3`).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("error %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}

	h.cfg.ProcRoot = "/proc" // the agent reaches the plugin's netns path through /proc/PID/root
	a, err := New(h.cfg, h.client, b, nil)
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
	z := &listeningZtunnel{lns: map[string]net.Listener{}}
	defer z.close()
	zctx, zcancel := context.WithCancel(ctx)
	zdone := make(chan struct{})
	go func() { defer close(zdone); zds.RunClient(zctx, h.cfg.ZDSSocket, z, nil) }()
	defer func() { zcancel(); <-zdone }()
	waitFor(t, "ztunnel to connect", a.ZDS().Connected)

	bin := filepath.Join(t.TempDir(), "ambit-cni")
	// Static, as the image carries it (and as make builds it: the race run's cgo setting would
	// compile the standard library once more).
	build := exec.Command("go", "build", "-o", bin, "github.com/ambit-mesh/ambit/cni/cmd/ambit-cni")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building ambit-cni: %v\n%s", err, out)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","agentSocket":%q,
		"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}],"ips":[{"interface":0,"address":"10.66.0.2/24"}]}}`,
		h.cfg.CNISocket, podNS)
	cni := func(command string) {
		t.Helper()
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=sandbox1", "CNI_NETNS="+podNS,
			"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin",
			"CNI_ARGS=K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-web")
		cmd.Stdin = strings.NewReader(conf)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if out, err := cmd.Output(); err != nil {
			t.Fatalf("ambit-cni %s: %v\n%s%s", command, err, out, stderr.String())
		}
	}

	if got := podDial(); got != "peer" {
		t.Fatalf("before ADD the pod reached %q; want the peer directly", got)
	}
	cni("ADD")
	if got, want := podDial(), "ztunnel 10.66.0.1:80 <nil>"; got != want {
		t.Errorf("after ADD the pod reached %q; want %q", got, want)
	}
	waitFor(t, "the annotation", func() bool { return h.annotation(t, "web") == "enabled" })
	cni("DEL")
	if got := podDial(); got != "peer" {
		t.Errorf("after DEL the pod reached %q; want the peer directly", got)
	}
	out, _ := exec.Command("nsenter", "--net="+podNS, "nft", "list", "ruleset").CombinedOutput()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("rules left in the pod after DEL:\n%s", s)
	}
}
