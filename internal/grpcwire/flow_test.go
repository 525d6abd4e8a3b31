package grpcwire_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const floodMethod = "/ambit.test.Flood/Flood"

// floodSent counts the bytes the Flood handler has handed to grpc-go, which sends them as the
// client's flow-control windows allow.
var floodSent atomic.Int64

// floodDesc is a server-streaming service: asked "count:size", it sends count messages of size
// bytes, the i-th filled with the byte 'a'+i%26.
var floodDesc = grpc.ServiceDesc{
	ServiceName: "ambit.test.Flood",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{StreamName: "Flood", ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
		in := &wrapperspb.StringValue{}
		if err := s.RecvMsg(in); err != nil {
			return err
		}
		var count, size int
		if _, err := fmt.Sscanf(in.GetValue(), "%d:%d", &count, &size); err != nil {
			return err
		}
		for i := range count {
			if err := s.SendMsg(wrapperspb.Bytes(bytes.Repeat([]byte{byte('a' + i%26)}, size))); err != nil {
				return err
			}
			floodSent.Add(int64(size))
		}
		return nil
	}}},
}

// TestLargeMessages sends and receives messages many times the initial 65535-byte windows.
func TestLargeMessages(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if got, err := call(ctx, c, nil, "big:3500000"); err != nil || got != strings.Repeat("x", 3500000) {
		t.Fatalf("a 3.5 MB answer: got %d bytes, %v", len(got), err)
	}
	st, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, st)
	for _, n := range []int{2 << 20, 100000, 3 << 20} {
		v := strings.Repeat("y", n)
		send(t, st, v)
		if got := recv(t, st); got != "echo "+v {
			t.Fatalf("echo of %d bytes: got %d bytes", n, len(got))
		}
	}
	st.CloseSend()
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("end: got %v, want io.EOF", err)
	}
}

// countingDial counts the connections a Conn opens.
func countingDial(n *atomic.Int32) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// TestConcurrentStreams runs bidi streams and unary calls at once: they share one connection.
func TestConcurrentStreams(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	var dials atomic.Int32
	c := dial(t, s.addr, grpcwire.Options{Dial: countingDial(&dials)})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Go(func() {
			st, err := c.NewStream(ctx, bidiMethod, nil)
			if err != nil {
				errs <- err
				return
			}
			if _, err := st.Recv(); err != nil {
				errs <- err
				return
			}
			for j := range 20 {
				v := fmt.Sprintf("stream %d message %d %s", i, j, strings.Repeat("z", j*1000))
				b, _ := proto.Marshal(wrapperspb.String(v))
				if err := st.Send(b); err != nil {
					errs <- err
					return
				}
				b, err := st.Recv()
				out := &wrapperspb.StringValue{}
				if err == nil {
					err = proto.Unmarshal(b, out)
				}
				if err != nil || out.GetValue() != "echo "+v {
					errs <- fmt.Errorf("stream %d message %d: got %.40q, %w", i, j, out.GetValue(), err)
					return
				}
			}
			st.CloseSend()
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				errs <- fmt.Errorf("stream %d end: got %w, want io.EOF", i, err)
			}
		})
	}
	for i := range 40 {
		wg.Go(func() {
			if got, err := call(ctx, c, nil, fmt.Sprint(i)); err != nil || got != fmt.Sprint("got ", i) {
				errs <- fmt.Errorf("call %d: got %q, %w", i, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("opened %d connections, want 1", n)
	}
}

// TestSlowReader leaves a stream's answer unread: the server stops at the stream's window, and
// calls on the same connection go on. Then the stream is read to its end.
func TestSlowReader(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	var dials atomic.Int32
	c := dial(t, s.addr, grpcwire.Options{Dial: countingDial(&dials)})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	floodSent.Store(0)
	const count, size = 40, 256 << 10 // 10 MiB, more than the stream window
	st, err := c.NewStream(ctx, floodMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, fmt.Sprintf("%d:%d", count, size))
	st.CloseSend()
	testutil.WaitFor(t, testTimeout, "the server to send 3 MiB of the unread stream", func() bool { return floodSent.Load() >= 3<<20 })
	for i := range 5 {
		if got, err := call(ctx, c, nil, "big:500000"); err != nil || len(got) != 500000 {
			t.Fatalf("call %d beside the unread stream: got %d bytes, %v", i, len(got), err)
		}
	}
	// The stream window (4 MiB) and grpc-go's own buffering bound what went out unread.
	if n := floodSent.Load(); n > 6<<20 {
		t.Errorf("the server sent %d bytes to an unread stream, want at most about its window", n)
	}
	for i := range count {
		b, err := st.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		out := &wrapperspb.BytesValue{}
		if err := proto.Unmarshal(b, out); err != nil || !bytes.Equal(out.GetValue(), bytes.Repeat([]byte{byte('a' + i%26)}, size)) {
			t.Fatalf("message %d: %d bytes, %v; want %d bytes of %q", i, len(out.GetValue()), err, size, rune('a'+i%26))
		}
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("end: got %v, want io.EOF", err)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("opened %d connections, want 1", n)
	}
}

// TestLargeMetadata sends a header block larger than a frame: HEADERS and CONTINUATION.
func TestLargeMetadata(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	s := startServer(t, false)
	c := dial(t, s.addr, grpcwire.Options{})
	token := "Bearer " + strings.Repeat("t", 40000)
	got, err := call(context.Background(), c, grpcwire.Metadata{"authorization": token}, "metadata")
	if err != nil || !strings.Contains(got, fmt.Sprintf("authorization=[%q]", token)) {
		t.Errorf("got %.80q..., %v; want the server to see the 40 kB token", got, err)
	}
}
