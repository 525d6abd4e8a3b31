package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
)

func nsRun(t *testing.T, path string, args ...string) {
	t.Helper()
	if out, err := exec.Command("nsenter", append([]string{"--net=" + path}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// TestProbeRuleSNATsKubeletTraffic checks with real traffic that a root-owned socket on the
// node reaches an enrolled pod from 169.254.7.127, and a pod not enrolled from the node's IP.
func TestProbeRuleSNATsKubeletTraffic(t *testing.T) {
	node, pod := holdNetns(t), holdNetns(t)
	podPid := strings.TrimSuffix(strings.TrimPrefix(pod, "/proc/"), "/ns/net")
	nsRun(t, node, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "eth0", "netns", podPid)
	nsRun(t, node, "ip", "link", "set", "cni0", "up")
	nsRun(t, node, "ip", "addr", "add", "10.88.0.1/24", "dev", "cni0")
	nsRun(t, pod, "ip", "link", "set", "lo", "up")
	nsRun(t, pod, "ip", "link", "set", "eth0", "up")
	nsRun(t, pod, "ip", "addr", "add", "10.88.0.2/24", "dev", "eth0")
	nsRun(t, pod, "ip", "addr", "add", "10.88.0.3/24", "dev", "eth0")
	nsRun(t, pod, "ip", "route", "add", "default", "via", "10.88.0.1")

	ph, err := netns.Open(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	ln, err := ph.Listen(context.Background(), &net.ListenConfig{}, "tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()

	if err := syncProbeRules(node, []netip.Addr{netip.MustParseAddr("10.88.0.2")}); err != nil {
		t.Fatal(err)
	}
	nh, err := netns.Open(node)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	for _, tt := range []struct{ dst, wantSource string }{
		{"10.88.0.2:8080", "169.254.7.127"}, // enrolled
		{"10.88.0.3:8080", "10.88.0.1"},     // not enrolled
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := nh.DialContext(ctx, "tcp4", tt.dst)
		cancel()
		if err != nil {
			t.Fatalf("dialing %s from the node: %v", tt.dst, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if got := strings.TrimSpace(line); err != nil || got != tt.wantSource {
			t.Errorf("%s saw the node's connection from %q (%v); want %s", tt.dst, got, err, tt.wantSource)
		}
	}
	if err := removeProbeRules(node); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("nsenter", "--net="+node, "nft", "list", "ruleset").CombinedOutput()
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("ruleset after removeProbeRules:\n%s\nwant empty", out)
	}
}
