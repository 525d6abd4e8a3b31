package grpcwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// fuzzConn is a connection whose server sends in and reads nothing.
type fuzzConn struct{ r io.Reader }

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

func testFrame(typ h2.FrameType, flags uint8, sid uint32, payload []byte) []byte {
	return append(h2.AppendFrameHeader(nil, len(payload), typ, flags, sid), payload...)
}

func testBlock(kv ...string) []byte {
	var b bytes.Buffer
	e := hpack.NewEncoder(&b)
	for i := 0; i < len(kv); i += 2 {
		e.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return b.Bytes()
}

// FuzzReadFrames feeds what a server might send to the read loop of a connection with two
// streams open: it must end with an error (at the latest at the end of the input) and leave
// both streams ended, their reads returning rather than waiting, whatever the bytes.
func FuzzReadFrames(f *testing.F) {
	settings := testFrame(h2.FrameSettings, 0, 0, []byte{0, 4, 0, 0, 0, 100, 0, 5, 0, 0, 0x40, 0})
	headers := testFrame(h2.FrameHeaders, h2.FlagEndHeaders, 1, testBlock(":status", "200", "content-type", "application/grpc"))
	data := testFrame(h2.FrameData, 0, 1, []byte{0, 0, 0, 0, 2, 'h', 'i'})
	trailers := testFrame(h2.FrameHeaders, h2.FlagEndHeaders|h2.FlagEndStream, 1, testBlock("grpc-status", "0"))
	wu := testFrame(h2.FrameWindowUpdate, 0, 3, binary.BigEndian.AppendUint32(nil, 1000))
	f.Add(bytes.Join([][]byte{settings, headers, data, trailers}, nil))
	f.Add(bytes.Join([][]byte{settings, testFrame(h2.FramePing, 0, 0, make([]byte, 8)), wu,
		testFrame(h2.FrameRSTStream, 0, 3, []byte{0, 0, 0, 8}), testFrame(h2.FrameGoAway, 0, 0, []byte{0, 0, 0, 1, 0, 0, 0, 0})}, nil))
	f.Add(bytes.Join([][]byte{settings, testFrame(h2.FrameHeaders, h2.FlagPadded|h2.FlagPriority, 3, append(append([]byte{2, 0, 0, 0, 0, 9}, testBlock(":status", "100")...), 0, 0)),
		testFrame(h2.FrameContinuation, h2.FlagEndHeaders, 3, nil), testFrame(h2.FrameData, h2.FlagPadded|h2.FlagEndStream, 3, []byte{1, 'x', 0})}, nil))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		tr := newTransport(&fuzzConn{r: bytes.NewReader(in)}, func(*transport) {})
		ctx := context.Background()
		var streams []*h2stream
		for range 2 {
			s, err := tr.open(ctx, []hpack.HeaderField{{Name: ":path", Value: "/a.B/C"}})
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, s)
		}
		err := tr.readFrames()
		if err == nil {
			t.Fatal("readFrames returned no error")
		}
		tr.mu.Lock()
		if tr.recvWin < 0 {
			t.Errorf("connection receive window %d", tr.recvWin)
		}
		for _, s := range streams {
			if s.recvWin < 0 || s.sendWin > maxWindow {
				t.Errorf("stream %d: receive window %d, send window %d", s.id, s.recvWin, s.sendWin)
			}
		}
		tr.mu.Unlock()
		tr.closeWith(err)
		buf := make([]byte, 512)
		for _, s := range streams {
			s.awaitHeaders(ctx)
			for {
				if _, err := s.read(ctx, buf); err != nil {
					break
				}
			}
		}
	})
}
