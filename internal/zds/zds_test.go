package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// fakeZtunnel is a Handler that records what it is told.
type fakeZtunnel struct {
	mu     sync.Mutex // guards the fields below
	events []string
	inodes map[string]uint64 // uid -> inode of the netns it received
	fail   map[string]string // uid -> error to answer AddWorkload with
}

func newFake() *fakeZtunnel {
	return &fakeZtunnel{inodes: map[string]uint64{}, fail: map[string]string{}}
}

func (f *fakeZtunnel) record(ev string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
}

func (f *fakeZtunnel) AddWorkload(_ context.Context, uid string, info *WorkloadInfo, h *netns.Handle) error {
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(h.Fd(), &st); err != nil {
		return err
	}
	f.mu.Lock()
	f.inodes[uid] = st.Ino
	msg := f.fail[uid]
	f.mu.Unlock()
	f.record(fmt.Sprintf("add %s %s/%s", uid, info.Namespace, info.Name))
	if msg != "" {
		return errors.New(msg)
	}
	return nil
}

func (f *fakeZtunnel) KeepWorkload(_ context.Context, uid string) error {
	f.record("keep " + uid)
	return nil
}

func (f *fakeZtunnel) DelWorkload(_ context.Context, uid string) error {
	f.record("del " + uid)
	return nil
}

func (f *fakeZtunnel) Connected(context.Context) error {
	f.record("connected")
	return nil
}

func (f *fakeZtunnel) SnapshotSent(context.Context) error {
	f.record("snapshot")
	return nil
}

func (f *fakeZtunnel) Events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, what, cond)
}

// newNetnsFile opens a fresh network namespace held by a sleeping process.
func newNetnsFile(t *testing.T) (*os.File, uint64) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	path := testutil.NewNetNS(t, "pod").Path
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, st.Ino
}

type testServer struct {
	*Server
	path string
}

func startServer(t *testing.T, ackTimeout time.Duration) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "zds", "ztunnel.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(nil, ackTimeout)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		s.Close()
	})
	return &testServer{Server: s, path: path}
}

// startClient runs RunClient with h until the test ends or the returned cancel is called.
func startClient(t *testing.T, path string, h Handler) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := RunClient(ctx, path, h, nil); err != nil {
			t.Errorf("RunClient: %v", err)
		}
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func info(name string) *WorkloadInfo {
	return &WorkloadInfo{Name: name, Namespace: "ns", ServiceAccount: "sa"}
}

func TestReplayThenLiveUpdates(t *testing.T) {
	s := startServer(t, 0)
	ctx := context.Background()
	nsA, inoA := newNetnsFile(t)
	nsB, inoB := newNetnsFile(t)

	// Before any ztunnel: Add records the pod but cannot deliver it.
	err := s.Add(ctx, Workload{UID: "a", Info: info("a"), Netns: nsA})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Add without ztunnel = %v; want ErrNotConnected", err)
	}
	if err := s.Add(ctx, Workload{UID: "k", Info: info("k")}); err != nil {
		t.Fatalf("Add without netns: %v", err)
	}
	if s.Connected() {
		t.Fatal("Connected() = true before any ztunnel connected")
	}

	zt := newFake()
	stop := startClient(t, s.path, zt)
	waitFor(t, "the replay", s.Connected)
	if got, want := zt.Events(), []string{"connected", "add a ns/a", "keep k", "snapshot"}; !slices.Equal(got, want) {
		t.Errorf("replay = %q, want %q", got, want)
	}

	if err := s.Add(ctx, Workload{UID: "b", Info: info("b"), Netns: nsB}); err != nil {
		t.Fatalf("Add b: %v", err)
	}
	zt.mu.Lock()
	zt.fail["c"] = "no such workload"
	zt.mu.Unlock()
	nsC, _ := newNetnsFile(t)
	if err := s.Add(ctx, Workload{UID: "c", Info: info("c"), Netns: nsC}); err == nil || !strings.Contains(err.Error(), "no such workload") {
		t.Errorf("Add c = %v; want ztunnel's error", err)
	}
	if err := s.Del(ctx, "c"); err != nil {
		t.Errorf("Del c: %v", err)
	}
	zt.mu.Lock()
	if zt.inodes["a"] != inoA || zt.inodes["b"] != inoB {
		t.Errorf("ztunnel got netns inodes a=%d b=%d; want %d %d", zt.inodes["a"], zt.inodes["b"], inoA, inoB)
	}
	zt.mu.Unlock()
	if got, want := s.UIDs(), []string{"a", "b", "k"}; !slices.Equal(got, want) {
		t.Errorf("UIDs() = %q, want %q", got, want)
	}

	// ztunnel restarts: it gets the whole set again.
	stop()
	waitFor(t, "the disconnect", func() bool { return !s.Connected() })
	zt2 := newFake()
	startClient(t, s.path, zt2)
	waitFor(t, "the second replay", s.Connected)
	if got, want := zt2.Events(), []string{"connected", "add a ns/a", "add b ns/b", "keep k", "snapshot"}; !slices.Equal(got, want) {
		t.Errorf("second replay = %q, want %q", got, want)
	}
}

func TestAddsToNewestDeletesToAll(t *testing.T) {
	s := startServer(t, 0)
	ctx := context.Background()
	old, cur := newFake(), newFake()
	startClient(t, s.path, old)
	waitFor(t, "the first ztunnel", s.Connected)
	startClient(t, s.path, cur)
	waitFor(t, "the second ztunnel", func() bool { return s.ready.Load() == 2 })

	ns, _ := newNetnsFile(t)
	if err := s.Add(ctx, Workload{UID: "p", Info: info("p"), Netns: ns}); err != nil {
		t.Fatal(err)
	}
	if err := s.Del(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if got, want := old.Events(), []string{"connected", "snapshot", "del p"}; !slices.Equal(got, want) {
		t.Errorf("old ztunnel got %q, want %q", got, want)
	}
	if got, want := cur.Events(), []string{"connected", "snapshot", "add p ns/p", "del p"}; !slices.Equal(got, want) {
		t.Errorf("new ztunnel got %q, want %q", got, want)
	}
}

// rawDial connects to the server and says hello with the given bytes.
func rawDial(t *testing.T, path string, hello []byte) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAckTimeout(t *testing.T) {
	s := startServer(t, 200*time.Millisecond)
	// A ztunnel that says hello, acks the snapshot, then never answers again.
	c := rawDial(t, s.path, []byte{0x08, 0x01})
	b, _, err := readPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	if req, err := DecodeRequest(b); err != nil || req.Kind != RequestSnapshotSent {
		t.Fatalf("first request = %+v, %v; want SnapshotSent", req, err)
	}
	if err := writePacket(c, "Ack", marshalAck(""), -1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection", s.Connected)
	ns, _ := newNetnsFile(t)
	err = s.Add(context.Background(), Workload{UID: "p", Info: info("p"), Netns: ns})
	if err == nil || !strings.Contains(err.Error(), "did not ack") {
		t.Fatalf("Add to a silent ztunnel = %v; want a timeout", err)
	}
	waitFor(t, "the silent connection to be dropped", func() bool { return !s.Connected() })
}

func TestServerRejectsBadHello(t *testing.T) {
	s := startServer(t, 0)
	for _, hello := range [][]byte{{0xff, 0xff}, {0x08, 0x07}} {
		c := rawDial(t, s.path, hello)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := readPacket(c); err == nil {
			t.Errorf("hello %x: the server answered; want it to close the connection", hello)
		}
	}
	if s.Connected() {
		t.Error("Connected() = true after bad hellos")
	}
}

func TestClientAcksMalformedRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "zds.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	zt := newFake()
	startClient(t, path, zt)
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _, err := readPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := DecodeHello(b); err != nil {
		t.Fatalf("client hello: %v", err)
	}
	add := (&Request{Kind: RequestAdd, UID: "p"}).Marshal()
	notNetns, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer notNetns.Close()
	tests := []struct {
		name    string
		send    func() error
		wantErr string
	}{
		{"garbage", func() error { _, err := c.Write([]byte{0xff, 0xff, 0xff}); return err }, "decoding WorkloadRequest"},
		{"add with an empty body", func() error { _, err := c.Write([]byte{0x0a, 0x00}); return err }, "AddWorkload without a uid"},
		{"add without fd", func() error { return writePacket(c, "add", add, -1) }, "carries 0 file descriptors"},
		{"add with a file that is no netns", func() error { return writePacket(c, "add", add, int(notNetns.Fd())) }, "not a namespace"},
		{"del without uid", func() error {
			return writePacket(c, "del", (&Request{Kind: RequestDel}).Marshal(), -1)
		}, "DelWorkload without a uid"},
		{"snapshot", func() error {
			return writePacket(c, "snapshot", (&Request{Kind: RequestSnapshotSent}).Marshal(), -1)
		}, ""},
	}
	for _, tt := range tests {
		if err := tt.send(); err != nil {
			t.Fatalf("%s: sending: %v", tt.name, err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _, err := readPacket(c)
		if err != nil {
			t.Fatalf("%s: reading the ack: %v", tt.name, err)
		}
		ack, err := DecodeResponse(b)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if tt.wantErr == "" && ack != "" || !strings.Contains(ack, tt.wantErr) {
			t.Errorf("%s: ack error = %q, want it to contain %q", tt.name, ack, tt.wantErr)
		}
	}
	if got, want := zt.Events(), []string{"connected", "snapshot"}; !slices.Equal(got, want) {
		t.Errorf("handler saw %q, want %q", got, want)
	}
}
