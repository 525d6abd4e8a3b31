package hbone

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// block encodes header fields given as name, value pairs.
func block(pairs ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i < len(pairs); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
	}
	return b.Bytes()
}

// readOne reads the first frame of in as the read loop does.
func readOne(in []byte) (*frame, error) {
	br := bufio.NewReader(bytes.NewReader(in))
	fr := newFrameReader(br)
	var hb [h2.FrameHeaderLen]byte
	if _, err := io.ReadFull(br, hb[:]); err != nil {
		return nil, err
	}
	return fr.readFrame(parseFrameHeader(hb[:]))
}

func TestReadFrame(t *testing.T) {
	connect := block(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.2:1"`)
	raw := func(typ http2.FrameType, flags http2.Flags, sid uint32, payload []byte) func(*http2.Framer) {
		return func(fr *http2.Framer) { fr.WriteRawFrame(typ, flags, sid, payload) }
	}
	tests := []struct {
		name       string
		write      func(*http2.Framer)
		wantConn   h2.ErrCode // a connection error with this code
		wantStream h2.ErrCode // or a stream error with this code
		wantErr    string     // in the error
		wantFields []string
	}{
		{name: "settings", write: func(fr *http2.Framer) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
		}},
		{name: "settings of 5 bytes", write: raw(http2.FrameSettings, 0, 0, make([]byte, 5)), wantConn: h2.ErrCodeFrameSize, wantErr: "SETTINGS frame of 5 bytes"},
		{name: "settings ack with a payload", write: raw(http2.FrameSettings, http2.FlagSettingsAck, 0, make([]byte, 6)), wantConn: h2.ErrCodeFrameSize},
		{name: "settings on a stream", write: raw(http2.FrameSettings, 0, 1, nil), wantConn: h2.ErrCodeProtocol, wantErr: "SETTINGS on stream 1"},
		{name: "ping of 7 bytes", write: raw(http2.FramePing, 0, 0, make([]byte, 7)), wantConn: h2.ErrCodeFrameSize},
		{name: "ping on a stream", write: raw(http2.FramePing, 0, 3, make([]byte, 8)), wantConn: h2.ErrCodeProtocol},
		{name: "goaway of 7 bytes", write: raw(http2.FrameGoAway, 0, 0, make([]byte, 7)), wantConn: h2.ErrCodeFrameSize},
		{name: "window update of 0 on the connection", write: raw(http2.FrameWindowUpdate, 0, 0, make([]byte, 4)), wantConn: h2.ErrCodeProtocol},
		{name: "window update of 0 on a stream", write: raw(http2.FrameWindowUpdate, 0, 3, make([]byte, 4)), wantStream: h2.ErrCodeProtocol},
		{name: "window update of 3 bytes", write: raw(http2.FrameWindowUpdate, 0, 3, make([]byte, 3)), wantConn: h2.ErrCodeFrameSize},
		{name: "rst on stream 0", write: raw(http2.FrameRSTStream, 0, 0, make([]byte, 4)), wantConn: h2.ErrCodeProtocol},
		{name: "priority of 4 bytes", write: raw(http2.FramePriority, 0, 1, make([]byte, 4)), wantStream: h2.ErrCodeFrameSize},
		{name: "unknown type", write: raw(0x42, 0, 1, []byte("ignored"))},
		{name: "above the frame size", write: raw(http2.FramePing, 0, 0, make([]byte, maxFrameSize+1)), wantConn: h2.ErrCodeFrameSize, wantErr: "above the 1048576 advertised"},
		{name: "continuation alone", write: raw(http2.FrameContinuation, http2.FlagContinuationEndHeaders, 1, connect), wantConn: h2.ErrCodeProtocol},
		{name: "headers", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect, EndHeaders: true})
		}, wantFields: []string{":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.2:1"`}},
		{name: "headers in three frames", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect[:3]})
			fr.WriteContinuation(1, false, connect[3:10])
			fr.WriteContinuation(1, true, connect[10:])
		}, wantFields: []string{":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.2:1"`}},
		{name: "headers padded with priority", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect, EndHeaders: true, PadLength: 7,
				Priority: http2.PriorityParam{StreamDep: 0, Weight: 5}})
		}, wantFields: []string{":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.2:1"`}},
		{name: "padding longer than the frame", write: raw(http2.FrameHeaders, http2.FlagHeadersPadded|http2.FlagHeadersEndHeaders, 1, []byte{9, 1, 2}), wantConn: h2.ErrCodeProtocol},
		{name: "headers on stream 0", write: raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, connect), wantConn: h2.ErrCodeProtocol},
		{name: "another frame inside a header block", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect[:3]})
			fr.WriteData(1, false, []byte("x"))
		}, wantConn: h2.ErrCodeProtocol, wantErr: "while the header block of stream 1 continues"},
		{name: "continuation of another stream", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect[:3]})
			fr.WriteContinuation(3, true, connect[3:])
		}, wantConn: h2.ErrCodeProtocol},
		{name: "upper-case name", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "CONNECT", "Forwarded", "x"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol, wantErr: `"Forwarded": want a lower-case token`},
		{name: "pseudo after regular", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("forwarded", "x", ":method", "CONNECT"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol, wantErr: "after a regular field"},
		{name: "unknown pseudo", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":verb", "CONNECT"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol, wantErr: `unknown pseudo-header ":verb"`},
		{name: "duplicate pseudo", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "CONNECT", ":method", "GET"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol, wantErr: "duplicate pseudo-header :method"},
		{name: "request and response pseudo", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":status", "200", ":method", "GET"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol},
		{name: "newline in a value", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "CONNECT", "forwarded", "a\nb"), EndHeaders: true})
		}, wantStream: h2.ErrCodeProtocol, wantErr: "control character 0xa"},
		{name: "header list too large", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("a", strings.Repeat("x", 40<<10), "b", strings.Repeat("y", 40<<10)), EndHeaders: true})
		}, wantConn: h2.ErrCodeProtocol, wantErr: "header list larger than"},
		{name: "string longer than the header list", write: func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("a", strings.Repeat("x", 70<<10)), EndHeaders: true})
		}, wantConn: h2.ErrCodeCompression},
		{name: "bad hpack", write: raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), wantConn: h2.ErrCodeCompression},
		{name: "truncated block", write: raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, connect[:len(connect)-2]), wantConn: h2.ErrCodeCompression},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			fr := http2.NewFramer(&buf, nil)
			fr.SetMaxReadFrameSize(1 << 24)
			tt.write(fr)
			f, err := readOne(buf.Bytes())
			var ce connErr
			var se streamErr
			switch {
			case tt.wantConn != 0:
				if !errors.As(err, &ce) || ce.code != tt.wantConn {
					t.Fatalf("got %v, want a connection error %v", err, tt.wantConn)
				}
			case tt.wantStream != 0:
				if !errors.As(err, &se) || se.code != tt.wantStream || se.sid == 0 || f == nil || f.sid != se.sid {
					t.Fatalf("got %v (frame %v), want a stream error %v with its frame", err, f, tt.wantStream)
				}
			case err != nil:
				t.Fatalf("got %v, want the frame", err)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantFields != nil {
				var got []string
				for _, hf := range f.fields {
					got = append(got, hf.Name, hf.Value)
				}
				if !reflect.DeepEqual(got, tt.wantFields) {
					t.Errorf("fields: got %q, want %q", got, tt.wantFields)
				}
			}
		})
	}
}

// A frame cut short by the end of the connection is an unexpected EOF, not a frame.
func TestReadFrameTruncated(t *testing.T) {
	var buf bytes.Buffer
	http2.NewFramer(&buf, nil).WritePing(false, [8]byte{1})
	if _, err := readOne(buf.Bytes()[:buf.Len()-1]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v, want unexpected EOF", err)
	}
}

// What the write side writes is what x/net/http2 reads.
func TestWriteFrames(t *testing.T) {
	var buf bytes.Buffer
	c := &conn{bw: bufio.NewWriter(&buf)}
	c.writeSettingsLocked(setting{h2.SettingMaxFrameSize, 1 << 20}, setting{h2.SettingInitialWindowSize, 4 << 20})
	c.writeSettingsAckLocked()
	c.writeWindowUpdateLocked(0, 12345)
	c.writeRSTLocked(3, h2.ErrCodeCancel)
	c.writePingLocked(false, [8]byte{1, 2, 3})
	c.writePingLocked(true, [8]byte{4})
	c.writeGoAwayLocked(7, h2.ErrCodeProtocol)
	c.writeHeaderFragmentLocked(5, true, true, false, connectBlock[:4])
	c.writeHeaderFragmentLocked(5, false, false, true, connectBlock[4:])
	c.writeDataLocked(5, []byte("payload"), true)
	c.bw.Flush()

	fr := http2.NewFramer(nil, &buf)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var got []string
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("x/net/http2 reading our frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				got = append(got, "settings ack")
				continue
			}
			v, _ := f.Value(http2.SettingMaxFrameSize)
			w, _ := f.Value(http2.SettingInitialWindowSize)
			got = append(got, "settings "+itoa(v)+" "+itoa(w))
		case *http2.WindowUpdateFrame:
			got = append(got, "window "+itoa(f.StreamID)+" "+itoa(f.Increment))
		case *http2.RSTStreamFrame:
			got = append(got, "rst "+itoa(f.StreamID)+" "+f.ErrCode.String())
		case *http2.PingFrame:
			got = append(got, "ping "+itoa(uint32(f.Data[0]))+" "+map[bool]string{true: "ack", false: "req"}[f.IsAck()])
		case *http2.GoAwayFrame:
			got = append(got, "goaway "+itoa(f.LastStreamID)+" "+f.ErrCode.String())
		case *http2.MetaHeadersFrame:
			got = append(got, "headers "+itoa(f.StreamID)+" "+f.PseudoValue("authority")+" "+map[bool]string{true: "end", false: "open"}[f.StreamEnded()])
		case *http2.DataFrame:
			got = append(got, "data "+itoa(f.StreamID)+" "+string(f.Data())+" "+map[bool]string{true: "end", false: "open"}[f.StreamEnded()])
		default:
			t.Errorf("unexpected frame %v", f)
		}
	}
	want := []string{"settings 1048576 4194304", "settings ack", "window 0 12345", "rst 3 CANCEL", "ping 1 req", "ping 4 ack",
		"goaway 7 PROTOCOL_ERROR", "headers 5 10.0.0.1:80 end", "data 5 payload end"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	// Names match x/net's, which earlier error messages and logs used.
	for code := h2.ErrCodeNo; code <= 0xd; code++ {
		if got, want := code.String(), http2.ErrCode(code).String(); got != want {
			t.Errorf("error code %d: got %q, want %q", code, got, want)
		}
	}
	for typ := h2.FrameData; typ <= h2.FrameContinuation; typ++ {
		if got, want := typ.String(), http2.FrameType(typ).String(); got != want {
			t.Errorf("frame type %d: got %q, want %q", typ, got, want)
		}
	}
}

var connectBlock = block(":method", "CONNECT", ":authority", "10.0.0.1:80")

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
