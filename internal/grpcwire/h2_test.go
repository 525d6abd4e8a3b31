package grpcwire_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/grpcwire"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// rawConn is the server side of one connection of a hand-driven HTTP/2 server: tests write
// exactly the frames they want, which no real server would send, with x/net's framer.
type rawConn struct {
	nc   net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

// rawServer accepts connections on loopback and runs handle on each, after reading the client
// preface. It returns the address and the count of connections accepted.
func rawServer(t *testing.T, handle func(c *rawConn) error) (string, *atomic.Int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			nc, err := lis.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() {
				defer nc.Close()
				c := &rawConn{nc: nc, fr: http2.NewFramer(nc, nc)}
				c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				c.henc = hpack.NewEncoder(&c.hbuf)
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
					t.Errorf("client preface: got %q, %v", preface, err)
					return
				}
				if err := handle(c); err != nil {
					t.Errorf("raw server: %v", err)
				}
			})
		}
	})
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return lis.Addr().String(), &n
}

// headers writes a header block of name, value pairs.
func (c *rawConn) headers(sid uint32, end bool, kv ...string) error {
	c.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		c.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: c.hbuf.Bytes(), EndStream: end, EndHeaders: true})
}

// answer sends a whole gRPC answer: headers, msg as one message, status OK.
func (c *rawConn) answer(sid uint32, msg []byte) error {
	if err := c.headers(sid, false, ":status", "200", "content-type", "application/grpc"); err != nil {
		return err
	}
	if err := c.fr.WriteData(sid, false, grpcFrame(msg)); err != nil {
		return err
	}
	return c.headers(sid, true, "grpc-status", "0")
}

// untilHeaders reads frames until the next request's headers.
func (c *rawConn) untilHeaders() (*http2.MetaHeadersFrame, error) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			return h, nil
		}
	}
}

// untilGoAway reads frames until the client's GOAWAY and returns its code, or the read error.
func (c *rawConn) untilGoAway() (http2.ErrCode, error) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return 0, err
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g.ErrCode, nil
		}
	}
}

func grpcFrame(msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// TestSettingsAndPing checks the client's settings, its answers to the server's PING and
// SETTINGS, and that it sends no more than the server's windows allow as they change: a
// 65535-byte default, then a stream window of 100 bytes, a WINDOW_UPDATE, a larger
// SETTINGS_INITIAL_WINDOW_SIZE.
func TestSettingsAndPing(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	msg := bytes.Repeat([]byte("0123456789"), 100)
	ready := make(chan struct{})
	addr, _ := rawServer(t, func(c *rawConn) error {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok {
			return fmt.Errorf("first frame %v, want SETTINGS", f.Header())
		}
		if v, _ := sf.Value(http2.SettingEnablePush); v != 0 {
			return fmt.Errorf("SETTINGS_ENABLE_PUSH %d, want 0", v)
		}
		if v, _ := sf.Value(http2.SettingInitialWindowSize); v < 1<<20 {
			return fmt.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d, want at least 1 MiB for xDS pushes", v)
		}
		c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100}, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
		c.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
		var acked, ponged bool
		var sid uint32
		for !acked || !ponged || sid == 0 {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return err
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				acked = acked || f.IsAck()
			case *http2.PingFrame:
				if !f.IsAck() || f.Data != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} {
					return fmt.Errorf("got PING ack=%v %v, want the ack of ours", f.IsAck(), f.Data)
				}
				ponged = true
			case *http2.MetaHeadersFrame:
				sid = f.StreamID
				got := map[string]string{}
				for _, hf := range f.Fields {
					got[hf.Name] = hf.Value
				}
				for _, want := range []string{":method=POST", ":scheme=http", ":path=" + bidiMethod, ":authority=" + c.nc.LocalAddr().String(),
					"content-type=application/grpc", "te=trailers", "user-agent=test-agent", "x-md=v"} {
					name, value, _ := strings.Cut(want, "=")
					if got[name] != value {
						return fmt.Errorf("request header %s: got %q, want %q", name, got[name], value)
					}
				}
			}
		}
		close(ready)
		var got []byte
		granted := 100
		for len(got) < 5+len(msg) {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return err
			}
			d, ok := f.(*http2.DataFrame)
			if !ok {
				continue
			}
			got = append(got, d.Data()...)
			if len(got) > granted {
				return fmt.Errorf("the client sent %d bytes with a window of %d", len(got), granted)
			}
			switch {
			case len(got) == 100:
				granted += 50
				c.fr.WriteWindowUpdate(sid, 50)
			case len(got) == 150:
				granted += 2000
				c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 2100})
			}
		}
		if !bytes.Equal(got, grpcFrame(msg)) {
			return fmt.Errorf("the server got %q, want the message framed", got)
		}
		return c.answer(sid, []byte("done"))
	})
	c := dial(t, addr, grpcwire.Options{UserAgent: "test-agent"})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := c.NewStream(ctx, bidiMethod, grpcwire.Metadata{"X-Md": "v"})
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	if err := st.Send(msg); err != nil {
		t.Fatal(err)
	}
	if b, err := st.Recv(); err != nil || string(b) != "done" {
		t.Fatalf("got %q, %v; want done", b, err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: got %v, want io.EOF", err)
	}
}

// TestGoAway: the server sends GOAWAY with last stream 1 while streams 1 and 3 are open.
// Stream 3 fails Unavailable, stream 1 finishes, and the next call opens a new connection.
func TestGoAway(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	closed := make(chan error, 1)
	addr, conns := rawServer(t, func(c *rawConn) error {
		c.fr.WriteSettings()
		h, err := c.untilHeaders()
		if err != nil {
			return err
		}
		if h.PseudoValue("path") == unaryMethod { // the second connection
			if err := c.answer(h.StreamID, []byte("second connection")); err != nil {
				return err
			}
			c.untilGoAway()
			return nil
		}
		h3, err := c.untilHeaders()
		if err != nil {
			return err
		}
		sids := []uint32{h.StreamID, h3.StreamID}
		c.fr.WriteGoAway(sids[0], http2.ErrCodeNo, []byte("draining"))
		if err := c.answer(sids[0], []byte("first")); err != nil {
			return err
		}
		// The client closes the connection once stream 1 is over.
		for {
			if _, err := c.fr.ReadFrame(); err != nil {
				closed <- err
				return nil
			}
		}
	})
	c := dial(t, addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st1, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	st3, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = st3.Recv()
	if grpcwire.CodeOf(err) != grpcwire.Unavailable || !strings.Contains(err.Error(), "GOAWAY") || !strings.Contains(err.Error(), "draining") {
		t.Errorf("stream 3: got %v, want Unavailable naming the GOAWAY", err)
	}
	if b, err := st1.Recv(); err != nil || string(b) != "first" {
		t.Errorf("stream 1: got %q, %v; want first", b, err)
	}
	st1.CloseSend()
	if _, err := st1.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream 1 end: got %v, want io.EOF", err)
	}
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("the client kept the connection after GOAWAY and its last stream")
	}
	b, err := c.Invoke(ctx, unaryMethod, nil, nil)
	if err != nil || string(b) != "second connection" {
		t.Errorf("after GOAWAY: got %q, %v", b, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestNoSettings: a server that accepts and says nothing fails the call once the wait for its
// SETTINGS is over, not at the call's deadline.
func TestNoSettings(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	t.Cleanup(grpcwire.SetSettingsTimeout(200 * time.Millisecond))
	hungUp := make(chan error, 1)
	addr, _ := rawServer(t, func(c *rawConn) error {
		_, err := c.untilGoAway() // until the client hangs up
		hungUp <- err
		return nil
	})
	c := dial(t, addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, err := c.Invoke(ctx, unaryMethod, nil, nil)
	if grpcwire.CodeOf(err) != grpcwire.Unavailable || !strings.Contains(err.Error(), "no HTTP/2 SETTINGS within 200ms") {
		t.Errorf("got %v, want Unavailable for the missing SETTINGS", err)
	}
	select {
	case err := <-hungUp:
		if !errors.Is(err, io.EOF) {
			t.Errorf("the server read %v, want EOF: the client closes the connection", err)
		}
	case <-ctx.Done():
		t.Error("the client did not close the connection")
	}
}

// TestBadServer: what a broken or hostile server writes fails the call as Unavailable with what
// was wrong, and the client sends GOAWAY with the error code before closing.
func TestBadServer(t *testing.T) {
	settings := func(c *rawConn) { c.fr.WriteSettings() }
	for _, tc := range []struct {
		name     string
		write    func(c *rawConn, sid uint32)
		contains string
		goAway   http2.ErrCode // 0: not checked
	}{
		{"http1", func(c *rawConn, _ uint32) { c.nc.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")) }, `first bytes "HTTP/1.1 " are not an HTTP/2 frame`, http2.ErrCodeProtocol},
		{"headers-first", func(c *rawConn, sid uint32) { c.headers(sid, true, ":status", "200") }, "first frame is a HEADERS", http2.ErrCodeProtocol},
		{"oversized", func(c *rawConn, sid uint32) {
			settings(c)
			c.fr.WriteRawFrame(http2.FrameData, 0, sid, make([]byte, 20000))
		}, "larger than the 16384 bytes", http2.ErrCodeFrameSize},
		{"data-on-0", func(c *rawConn, _ uint32) { settings(c); c.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")) }, "DATA frame (flags 0x0, stream 0, 1 bytes) on stream 0", http2.ErrCodeProtocol},
		{"data-idle", func(c *rawConn, _ uint32) { settings(c); c.fr.WriteRawFrame(http2.FrameData, 0, 9, []byte("x")) }, "did not open", http2.ErrCodeProtocol},
		{"window-0", func(c *rawConn, _ uint32) {
			settings(c)
			c.fr.WriteRawFrame(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 0, 0})
		}, "increment of 0", http2.ErrCodeProtocol},
		{"window-overflow", func(c *rawConn, _ uint32) { settings(c); c.fr.WriteWindowUpdate(0, 1<<31-1) }, "connection window overflows", http2.ErrCodeFlowControl},
		{"continuation-alone", func(c *rawConn, sid uint32) { settings(c); c.fr.WriteContinuation(sid, true, []byte{0x88}) }, "without HEADERS", http2.ErrCodeProtocol},
		{"interleaved-headers", func(c *rawConn, sid uint32) {
			settings(c)
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: []byte{0x88}})
			c.fr.WritePing(false, [8]byte{})
		}, "awaits CONTINUATION", http2.ErrCodeProtocol},
		{"push", func(c *rawConn, sid uint32) {
			settings(c)
			c.fr.WritePushPromise(http2.PushPromiseParam{StreamID: sid, PromiseID: 2, BlockFragment: []byte{0x88}, EndHeaders: true})
		}, "disabled push", http2.ErrCodeProtocol},
		{"hpack", func(c *rawConn, sid uint32) {
			settings(c)
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0xff}, EndHeaders: true})
		}, "decoding the headers of stream 1", http2.ErrCodeCompression},
		{"frame-size-setting", func(c *rawConn, _ uint32) { c.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100}) }, "SETTINGS_MAX_FRAME_SIZE 100", http2.ErrCodeProtocol},
		{"push-setting", func(c *rawConn, _ uint32) { c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 1}) }, "SETTINGS_ENABLE_PUSH 1", http2.ErrCodeProtocol},
		{"short-ping", func(c *rawConn, _ uint32) { settings(c); c.fr.WriteRawFrame(http2.FramePing, 0, 0, []byte{1, 2, 3}) }, "PING frame", http2.ErrCodeFrameSize},
		{"settings-torn", func(c *rawConn, _ uint32) { c.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 4, 0}) }, "not a whole number of settings", http2.ErrCodeFrameSize},
		{"eof-in-frame", func(c *rawConn, sid uint32) {
			settings(c)
			c.nc.Write([]byte{0, 0, 10, 0, 0, 0, 0, 0, byte(sid), 'x'})
			c.nc.(*net.TCPConn).CloseWrite()
		}, "unexpected EOF", 0},
		{"goaway-first", func(c *rawConn, _ uint32) { c.fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("too many")) }, `ENHANCE_YOUR_CALM, "too many"`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t, testTimeout)
			goAway := make(chan http2.ErrCode, 1)
			addr, _ := rawServer(t, func(c *rawConn) error {
				h, err := c.untilHeaders()
				if err != nil {
					return err
				}
				tc.write(c, h.StreamID)
				code, err := c.untilGoAway()
				if err == nil {
					goAway <- code
				}
				return nil
			})
			c := dial(t, addr, grpcwire.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			_, err := c.Invoke(ctx, unaryMethod, nil, nil)
			if grpcwire.CodeOf(err) != grpcwire.Unavailable || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("got %v, want Unavailable containing %q", err, tc.contains)
			}
			if tc.goAway == 0 {
				return
			}
			select {
			case code := <-goAway:
				if code != tc.goAway {
					t.Errorf("the client's GOAWAY: %v, want %v", code, tc.goAway)
				}
			case <-ctx.Done():
				t.Errorf("no GOAWAY from the client")
			}
		})
	}
}

// TestStreamErrors: what is wrong with one stream fails that call only; the connection
// serves the next.
func TestStreamErrors(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	rst := make(chan http2.ErrCode, 10)
	addr, conns := rawServer(t, func(c *rawConn) error {
		c.fr.WriteSettings()
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return nil
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok && r.ErrCode != http2.ErrCodeNo {
				rst <- r.ErrCode // NO_ERROR: the client ends a request the server answered early
			}
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok {
				continue
			}
			sid := h.StreamID
			switch h.PseudoValue("path") {
			case "/t.DataFirst/M":
				c.fr.WriteData(sid, true, grpcFrame([]byte("x")))
			case "/t.BadStatus/M":
				c.headers(sid, true, ":status", "abc")
			case "/t.NoStatus/M":
				c.headers(sid, true, "grpc-status", "0")
			case "/t.Pseudo/M":
				c.headers(sid, false, ":status", "200", "content-type", "application/grpc")
				c.headers(sid, true, ":path", "/x", "grpc-status", "0")
			case "/t.Refused/M":
				c.fr.WriteRSTStream(sid, http2.ErrCodeRefusedStream)
			case "/t.Calm/M":
				c.fr.WriteRSTStream(sid, http2.ErrCodeEnhanceYourCalm)
			case "/t.Informational/M":
				c.headers(sid, false, ":status", "100")
				c.answer(sid, []byte("after 100"))
			case "/t.Padded/M":
				c.headers(sid, false, ":status", "200", "content-type", "application/grpc")
				c.fr.WriteDataPadded(sid, false, grpcFrame([]byte("padded")), make([]byte, 200))
				c.headers(sid, true, "grpc-status", "0")
			default:
				c.answer(sid, []byte("fine"))
			}
		}
	})
	c := dial(t, addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, tc := range []struct {
		method   string
		code     grpcwire.Code
		contains string
		rst      http2.ErrCode // what the client resets the stream with; 0: it does not
	}{
		{"/t.DataFirst/M", grpcwire.Internal, "DATA before the response headers", http2.ErrCodeProtocol},
		{"/t.BadStatus/M", grpcwire.Internal, `:status "abc"`, http2.ErrCodeProtocol},
		{"/t.NoStatus/M", grpcwire.Internal, "without :status", http2.ErrCodeProtocol},
		{"/t.Pseudo/M", grpcwire.Internal, `pseudo-header ":path"`, http2.ErrCodeProtocol},
		{"/t.Refused/M", grpcwire.Unavailable, "REFUSED_STREAM", 0},
		{"/t.Calm/M", grpcwire.ResourceExhausted, "ENHANCE_YOUR_CALM", 0},
		{"/t.Informational/M", grpcwire.OK, "after 100", 0},
		{"/t.Padded/M", grpcwire.OK, "padded", 0},
	} {
		b, err := c.Invoke(ctx, tc.method, nil, nil)
		if grpcwire.CodeOf(err) != tc.code || (err != nil && !strings.Contains(err.Error(), tc.contains)) || (err == nil && string(b) != tc.contains) {
			t.Errorf("%s: got %q, %v; want %v with %q", tc.method, b, err, tc.code, tc.contains)
		}
		if tc.rst != 0 {
			select {
			case code := <-rst:
				if code != tc.rst {
					t.Errorf("%s: the client reset the stream with %v, want %v", tc.method, code, tc.rst)
				}
			case <-ctx.Done():
				t.Fatalf("%s: the client did not reset the stream", tc.method)
			}
		}
		if b, err := c.Invoke(ctx, "/t.Fine/M", nil, nil); err != nil || string(b) != "fine" {
			t.Errorf("after %s: got %q, %v", tc.method, b, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestMaxConcurrentStreams: with the server's SETTINGS_MAX_CONCURRENT_STREAMS at 1, a second
// call waits for the first stream to end, on the same connection.
func TestMaxConcurrentStreams(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	ready := make(chan struct{})
	endFirst := make(chan struct{})
	addr, conns := rawServer(t, func(c *rawConn) error {
		c.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
		var first uint32
		for acked := false; !acked || first == 0; {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return err
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				acked = acked || f.IsAck()
			case *http2.MetaHeadersFrame:
				first = f.StreamID
			}
		}
		close(ready)
		<-endFirst
		if err := c.answer(first, []byte("first")); err != nil {
			return err
		}
		// The client may open the second stream once it has ended the first (END_STREAM or
		// RST_STREAM), not before: the server counts it open until then.
		firstEnded := false
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return err
			}
			switch f := f.(type) {
			case *http2.DataFrame:
				firstEnded = firstEnded || f.StreamID == first && f.StreamEnded()
			case *http2.RSTStreamFrame:
				firstEnded = firstEnded || f.StreamID == first
			case *http2.MetaHeadersFrame:
				if !firstEnded {
					return fmt.Errorf("stream %d opened while stream %d is open, beyond SETTINGS_MAX_CONCURRENT_STREAMS 1", f.StreamID, first)
				}
				return c.answer(f.StreamID, []byte("second"))
			}
		}
	})
	c := dial(t, addr, grpcwire.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The first call opens the connection; its SETTINGS must be in force before the second.
	st, err := c.NewStream(ctx, bidiMethod, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	second := make(chan error, 1)
	go func() {
		b, err := c.Invoke(ctx, unaryMethod, nil, nil)
		if err == nil && string(b) != "second" {
			err = fmt.Errorf("got %q, want second", b)
		}
		second <- err
	}()
	// Nothing to wait for: a client that ignored the limit would open the second stream now.
	time.Sleep(100 * time.Millisecond)
	close(endFirst)
	if b, err := st.Recv(); err != nil || string(b) != "first" {
		t.Fatalf("first: got %q, %v", b, err)
	}
	st.CloseSend()
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("first end: got %v, want io.EOF", err)
	}
	if err := <-second; err != nil {
		t.Errorf("second: %v", err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestTLSWithoutH2: a TLS server that does not agree on h2 (ALPN) is not spoken to.
func TestTLSWithoutH2(t *testing.T) {
	testutil.CheckGoroutines(t, testTimeout)
	cert, root := serving(t)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := lis.Accept()
			if err != nil {
				return
			}
			nc.(*tls.Conn).Handshake()
			io.Copy(io.Discard, nc)
			nc.Close()
		}
	})
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	c := dial(t, lis.Addr().String(), grpcwire.Options{TLS: &tls.Config{RootCAs: root, ServerName: "istiod.istio-system.svc"}})
	_, err = c.Invoke(context.Background(), unaryMethod, nil, nil)
	if grpcwire.CodeOf(err) != grpcwire.Unavailable || !strings.Contains(err.Error(), `negotiated the application protocol "" (ALPN), not h2`) {
		t.Errorf("got %v, want Unavailable saying the server did not agree on h2", err)
	}
}
