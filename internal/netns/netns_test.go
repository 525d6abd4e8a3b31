package netns_test

// The tests are outside the package so that they can use internal/testutil, which imports it.

import (
	"context"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// newNetNS makes a fresh network namespace and returns a Handle to it.
func newNetNS(t *testing.T) *netns.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	return testutil.NewNetNS(t, "test").Handle
}

func TestListenAndDialStayInNamespace(t *testing.T) {
	h := newNetNS(t)
	ctx := context.Background()
	// Loopback is down in a fresh namespace: bring it up from inside.
	if err := h.Do(func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatalf("bringing lo up: %v", err)
	}
	ln, err := h.Listen(ctx, &net.ListenConfig{}, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen in namespace: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	addr := ln.Addr().String()

	// From the root namespace the port does not exist.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("dial %s from root namespace succeeded; want refused", addr)
	}
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s inside namespace: %v", addr, err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read = %q, %v; want \"hi\"", buf, err)
	}
}

func TestDoLeavesCallerNamespace(t *testing.T) {
	h := newNetNS(t)
	before, _ := os.Readlink("/proc/thread-self/ns/net")
	var inside string
	if err := h.Do(func() error {
		var err error
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Readlink("/proc/thread-self/ns/net")
	if inside == before {
		t.Errorf("inside Do the namespace is %s, the same as outside", inside)
	}
	if after != before {
		t.Errorf("after Do the namespace is %s; want %s", after, before)
	}
}
