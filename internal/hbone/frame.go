package hbone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/net/http2/hpack"
)

// HTTP/2 framing (RFC 9113 section 4 and 6), the part of it HBONE speaks. It is written here
// rather than taken from golang.org/x/net/http2, whose package also holds a server and a
// client and imports net/http: ztunnel's resident memory is mostly its own binary's pages,
// and net/http with its dependencies is about 1 MB of them. HPACK is x/net's hpack package,
// which stands alone.

// clientPreface starts every HTTP/2 connection (RFC 9113 section 3.4).
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// frameHeaderLen is the size of a frame header.
const frameHeaderLen = 9

type frameType uint8

const (
	frameData         frameType = 0x0
	frameHeaders      frameType = 0x1
	framePriority     frameType = 0x2
	frameRSTStream    frameType = 0x3
	frameSettings     frameType = 0x4
	framePushPromise  frameType = 0x5
	framePing         frameType = 0x6
	frameGoAway       frameType = 0x7
	frameWindowUpdate frameType = 0x8
	frameContinuation frameType = 0x9
)

var frameNames = [...]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

func (t frameType) String() string {
	if int(t) < len(frameNames) {
		return frameNames[t]
	}
	return "UNKNOWN_FRAME_TYPE_" + strconv.Itoa(int(t))
}

// Frame flags; each means something for some frame types only.
const (
	flagEndStream  = 0x1  // DATA, HEADERS
	flagAck        = 0x1  // SETTINGS, PING
	flagEndHeaders = 0x4  // HEADERS, CONTINUATION
	flagPadded     = 0x8  // DATA, HEADERS
	flagPriority   = 0x20 // HEADERS
)

// errCode is an RST_STREAM or GOAWAY error code (RFC 9113 section 7).
type errCode uint32

const (
	errCodeNo          errCode = 0x0
	errCodeProtocol    errCode = 0x1
	errCodeFlowControl errCode = 0x3
	errCodeStreamClose errCode = 0x5
	errCodeFrameSize   errCode = 0x6
	errCodeRefused     errCode = 0x7
	errCodeCancel      errCode = 0x8
	errCodeCompression errCode = 0x9
)

var errCodeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
	"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
	"ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

func (e errCode) String() string {
	if int(e) < len(errCodeNames) {
		return errCodeNames[e]
	}
	return fmt.Sprintf("unknown error code 0x%x", uint32(e))
}

type settingID uint16

const (
	settingHeaderTableSize      settingID = 0x1
	settingEnablePush           settingID = 0x2
	settingMaxConcurrentStreams settingID = 0x3
	settingInitialWindowSize    settingID = 0x4
	settingMaxFrameSize         settingID = 0x5
	settingMaxHeaderListSize    settingID = 0x6
)

type setting struct {
	id  settingID
	val uint32
}

// check reports a value RFC 9113 section 6.5.2 forbids, as a connection error.
func (s setting) check() error {
	switch {
	case s.id == settingEnablePush && s.val > 1:
		return connErr{errCodeProtocol, fmt.Sprintf("SETTINGS_ENABLE_PUSH %d, want 0 or 1", s.val)}
	case s.id == settingInitialWindowSize && s.val > maxWindow:
		return connErr{errCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d above 2^31-1", s.val)}
	case s.id == settingMaxFrameSize && (s.val < defaultMaxFrame || s.val > 1<<24-1):
		return connErr{errCodeProtocol, fmt.Sprintf("SETTINGS_MAX_FRAME_SIZE %d outside 16384..16777215", s.val)}
	}
	return nil
}

// connErr is a connection error: GOAWAY with code, then close.
type connErr struct {
	code errCode
	msg  string
}

func (e connErr) Error() string { return fmt.Sprintf("http2 %v: %s", e.code, e.msg) }

// streamErr is a stream error: RST_STREAM with code; the connection goes on.
type streamErr struct {
	sid  uint32
	code errCode
	msg  string
}

func (e streamErr) Error() string { return fmt.Sprintf("stream %d: %v: %s", e.sid, e.code, e.msg) }

// frameHeader is the 9-byte header of every frame.
type frameHeader struct {
	length uint32
	typ    frameType
	flags  uint8
	sid    uint32
}

func parseFrameHeader(h []byte) frameHeader {
	return frameHeader{
		length: uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2]),
		typ:    frameType(h[3]),
		flags:  h[4],
		sid:    binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1),
	}
}

func (h frameHeader) String() string {
	return fmt.Sprintf("%v flags=%#x stream=%d len=%d", h.typ, h.flags, h.sid, h.length)
}

// frame is one frame other than DATA, as the read loop reads it.
type frame struct {
	frameHeader
	// payload is the frame's payload, valid until the next frame is read. For HEADERS it is
	// empty: fields holds the decoded header block, CONTINUATIONs included.
	payload []byte
	fields  []hpack.HeaderField
}

func (f *frame) has(flag uint8) bool { return f.flags&flag != 0 }

// pseudo returns the value of the pseudo-header ":"+name in a HEADERS frame, or "".
func (f *frame) pseudo(name string) string {
	for _, hf := range f.fields {
		if len(hf.Name) == len(name)+1 && hf.Name[0] == ':' && hf.Name[1:] == name {
			return hf.Value
		}
	}
	return ""
}

// frameReader reads the frames other than DATA for the read loop, which reads DATA
// payloads itself. It checks what RFC 9113 section 6 asks of each frame's size and stream,
// and decodes header blocks.
type frameReader struct {
	r    io.Reader // the connection's buffered reader
	buf  []byte    // payloads up to defaultMaxFrame bytes, reused
	hdec *hpack.Decoder
	// The header block being decoded, its size as RFC 9113 section 6.5.2 counts it, and the
	// first problem found in its fields.
	fields   []hpack.HeaderField
	listSize uint32
	fieldErr string
	sawReg   bool
}

func newFrameReader(r io.Reader) *frameReader {
	fr := &frameReader{r: r}
	fr.hdec = hpack.NewDecoder(4096, fr.emit)
	// A string longer than the whole header list we accept fails the decoding before it is
	// buffered.
	fr.hdec.SetMaxStringLength(maxHeaderList)
	return fr
}

// readFrame reads the payload of the frame whose header h was read, and for HEADERS the
// CONTINUATIONs after it. A connErr ends the connection; a streamErr resets the stream and
// comes with the frame.
func (fr *frameReader) readFrame(h frameHeader) (*frame, error) {
	if h.length > maxFrameSize {
		return nil, connErr{errCodeFrameSize, fmt.Sprintf("%v frame of %d bytes, above the %d advertised", h.typ, h.length, maxFrameSize)}
	}
	p, err := fr.readPayload(h.length)
	if err != nil {
		return nil, err
	}
	f := &frame{frameHeader: h, payload: p}
	var size bool // the payload's size is wrong for the type
	switch h.typ {
	case frameHeaders:
		return fr.readHeaders(f)
	case frameContinuation:
		return nil, connErr{errCodeProtocol, "CONTINUATION without HEADERS"}
	case frameSettings:
		size = h.length%6 != 0 || (f.has(flagAck) && h.length != 0)
	case framePing:
		size = h.length != 8
	case frameGoAway:
		size = h.length < 8
	case frameWindowUpdate, frameRSTStream:
		size = h.length != 4
	case framePriority:
		if h.length != 5 && h.sid != 0 {
			return f, streamErr{h.sid, errCodeFrameSize, fmt.Sprintf("PRIORITY of %d bytes", h.length)}
		}
	}
	if size {
		return nil, connErr{errCodeFrameSize, fmt.Sprintf("%v frame of %d bytes", h.typ, h.length)}
	}
	switch h.typ {
	case frameSettings, framePing, frameGoAway:
		if h.sid != 0 {
			return nil, connErr{errCodeProtocol, fmt.Sprintf("%v on stream %d", h.typ, h.sid)}
		}
	case frameRSTStream, framePriority, framePushPromise:
		if h.sid == 0 {
			return nil, connErr{errCodeProtocol, fmt.Sprintf("%v on stream 0", h.typ)}
		}
	case frameWindowUpdate:
		if binary.BigEndian.Uint32(p)&(1<<31-1) == 0 {
			if h.sid == 0 {
				return nil, connErr{errCodeProtocol, "WINDOW_UPDATE of 0 on the connection"}
			}
			return f, streamErr{h.sid, errCodeProtocol, "WINDOW_UPDATE of 0"}
		}
	}
	return f, nil
}

// readPayload reads n bytes into fr.buf, or for a rare frame longer than the default frame
// size (a big header block, an unknown frame) into a buffer the connection does not keep.
func (fr *frameReader) readPayload(n uint32) ([]byte, error) {
	var p []byte
	if n <= defaultMaxFrame {
		if uint32(cap(fr.buf)) < n {
			fr.buf = make([]byte, n)
		}
		p = fr.buf[:n]
	} else {
		p = make([]byte, n)
	}
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return p, nil
}

// readHeaders decodes the header block of HEADERS f and its CONTINUATIONs.
func (fr *frameReader) readHeaders(f *frame) (*frame, error) {
	if f.sid == 0 {
		return nil, connErr{errCodeProtocol, "HEADERS on stream 0"}
	}
	frag := f.payload
	if f.has(flagPadded) {
		if len(frag) < 1 || int(frag[0]) > len(frag)-1 {
			return nil, connErr{errCodeProtocol, "HEADERS padding longer than the frame"}
		}
		frag = frag[1 : len(frag)-int(frag[0])]
	}
	if f.has(flagPriority) {
		if len(frag) < 5 {
			return nil, connErr{errCodeFrameSize, "HEADERS too short for its priority"}
		}
		frag = frag[5:]
	}
	fr.fields, fr.listSize, fr.fieldErr, fr.sawReg = nil, 0, "", false
	end := f.has(flagEndHeaders)
	for {
		if _, err := fr.hdec.Write(frag); err != nil {
			return nil, connErr{errCodeCompression, fmt.Sprintf("decoding the header block: %v", err)}
		}
		if fr.listSize > maxHeaderList {
			// Reading on would let a peer keep this loop busy with CONTINUATIONs.
			return nil, connErr{errCodeProtocol, fmt.Sprintf("header list larger than the %d bytes advertised", maxHeaderList)}
		}
		if end {
			break
		}
		var hb [frameHeaderLen]byte
		if _, err := io.ReadFull(fr.r, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		ch := parseFrameHeader(hb[:])
		if ch.typ != frameContinuation || ch.sid != f.sid {
			return nil, connErr{errCodeProtocol, fmt.Sprintf("%v while the header block of stream %d continues", ch, f.sid)}
		}
		if ch.length > maxFrameSize {
			return nil, connErr{errCodeFrameSize, fmt.Sprintf("CONTINUATION of %d bytes, above the %d advertised", ch.length, maxFrameSize)}
		}
		p, err := fr.readPayload(ch.length)
		if err != nil {
			return nil, err
		}
		frag, end = p, ch.flags&flagEndHeaders != 0
	}
	if err := fr.hdec.Close(); err != nil {
		return nil, connErr{errCodeCompression, fmt.Sprintf("decoding the header block: %v", err)}
	}
	f.payload, f.fields = nil, fr.fields
	f.flags |= flagEndHeaders
	if fr.fieldErr != "" {
		return f, streamErr{f.sid, errCodeProtocol, fr.fieldErr}
	}
	return f, nil
}

// emit receives each decoded header field and checks it (RFC 9113 section 8.2 and 8.3).
func (fr *frameReader) emit(hf hpack.HeaderField) {
	fr.listSize += hf.Size()
	if fr.listSize > maxHeaderList || fr.fieldErr != "" {
		return
	}
	if err := checkField(hf, fr.sawReg, fr.fields); err != "" {
		fr.fieldErr = err
		return
	}
	fr.sawReg = fr.sawReg || !hf.IsPseudo()
	fr.fields = append(fr.fields, hf)
}

// checkField returns what is wrong with hf after the fields before it, or "".
func checkField(hf hpack.HeaderField, sawRegular bool, before []hpack.HeaderField) string {
	for i := 0; i < len(hf.Value); i++ {
		if c := hf.Value[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Sprintf("header field %q: control character %#x in its value", hf.Name, c)
		}
	}
	if hf.IsPseudo() {
		if sawRegular {
			return fmt.Sprintf("pseudo-header %s after a regular field", hf.Name)
		}
		switch hf.Name {
		case ":method", ":scheme", ":authority", ":path", ":protocol", ":status":
		default:
			return fmt.Sprintf("unknown pseudo-header %q", hf.Name)
		}
		for _, b := range before {
			if b.Name == hf.Name {
				return fmt.Sprintf("duplicate pseudo-header %s", hf.Name)
			}
			if (b.Name == ":status") != (hf.Name == ":status") {
				return "request and response pseudo-headers mixed"
			}
		}
		return ""
	}
	if hf.Name == "" {
		return "empty header field name"
	}
	for i := 0; i < len(hf.Name); i++ {
		if c := hf.Name[i]; c >= 0x80 || !tokenChar[c] || ('A' <= c && c <= 'Z') {
			return fmt.Sprintf("header field name %q: want a lower-case token", hf.Name)
		}
	}
	return ""
}

// tokenChar holds the bytes of an RFC 9110 token.
var tokenChar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// The write side: each method writes one frame into c.bw; wmu must be held.

func (c *conn) writeFrameHeaderLocked(length int, t frameType, flags uint8, sid uint32) error {
	h := &c.hdr
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3], h[4] = byte(t), flags
	binary.BigEndian.PutUint32(h[5:], sid)
	_, err := c.bw.Write(h[:])
	return err
}

func (c *conn) writeSettingsLocked(ss ...setting) error {
	if err := c.writeFrameHeaderLocked(6*len(ss), frameSettings, 0, 0); err != nil {
		return err
	}
	var b [6]byte
	for _, s := range ss {
		binary.BigEndian.PutUint16(b[:], uint16(s.id))
		binary.BigEndian.PutUint32(b[2:], s.val)
		if _, err := c.bw.Write(b[:]); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) writeSettingsAckLocked() error {
	return c.writeFrameHeaderLocked(0, frameSettings, flagAck, 0)
}

// write4Locked writes a frame whose payload is one 32-bit word (WINDOW_UPDATE, RST_STREAM).
func (c *conn) write4Locked(t frameType, sid, v uint32) error {
	if err := c.writeFrameHeaderLocked(4, t, 0, sid); err != nil {
		return err
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	_, err := c.bw.Write(b[:])
	return err
}

func (c *conn) writeWindowUpdateLocked(sid, incr uint32) error {
	return c.write4Locked(frameWindowUpdate, sid, incr)
}

func (c *conn) writeRSTLocked(sid uint32, code errCode) error {
	return c.write4Locked(frameRSTStream, sid, uint32(code))
}

func (c *conn) writePingLocked(ack bool, data [8]byte) error {
	var flags uint8
	if ack {
		flags = flagAck
	}
	if err := c.writeFrameHeaderLocked(8, framePing, flags, 0); err != nil {
		return err
	}
	_, err := c.bw.Write(data[:])
	return err
}

func (c *conn) writeGoAwayLocked(last uint32, code errCode) error {
	if err := c.writeFrameHeaderLocked(8, frameGoAway, 0, 0); err != nil {
		return err
	}
	var b [8]byte
	binary.BigEndian.PutUint32(b[:], last)
	binary.BigEndian.PutUint32(b[4:], uint32(code))
	_, err := c.bw.Write(b[:])
	return err
}

// writeHeaderFragmentLocked writes HEADERS (first) or CONTINUATION with one fragment of a
// header block.
func (c *conn) writeHeaderFragmentLocked(sid uint32, first, endStream, endHeaders bool, frag []byte) error {
	t, flags := frameContinuation, uint8(0)
	if first {
		t = frameHeaders
		if endStream {
			flags |= flagEndStream
		}
	}
	if endHeaders {
		flags |= flagEndHeaders
	}
	if err := c.writeFrameHeaderLocked(len(frag), t, flags, sid); err != nil {
		return err
	}
	_, err := c.bw.Write(frag)
	return err
}
