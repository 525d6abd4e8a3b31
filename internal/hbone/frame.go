package hbone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// HTTP/2 framing (RFC 9113 section 4 and 6), the part of it HBONE speaks. It is written here
// rather than taken from golang.org/x/net/http2, whose package also holds a server and a
// client and imports net/http: ztunnel's resident memory is mostly its own binary's pages,
// and net/http with its dependencies is about 1 MB of them. HPACK is x/net's hpack package,
// which stands alone; the vocabulary (frame types, flags, codes) is internal/h2's.

type setting struct {
	id  h2.SettingID
	val uint32
}

// check reports a value RFC 9113 section 6.5.2 forbids, as a connection error.
func (s setting) check() error {
	switch {
	case s.id == h2.SettingEnablePush && s.val > 1:
		return connErr{h2.ErrCodeProtocol, fmt.Sprintf("SETTINGS_ENABLE_PUSH %d, want 0 or 1", s.val)}
	case s.id == h2.SettingInitialWindowSize && s.val > maxWindow:
		return connErr{h2.ErrCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d above 2^31-1", s.val)}
	case s.id == h2.SettingMaxFrameSize && (s.val < defaultMaxFrame || s.val > 1<<24-1):
		return connErr{h2.ErrCodeProtocol, fmt.Sprintf("SETTINGS_MAX_FRAME_SIZE %d outside 16384..16777215", s.val)}
	}
	return nil
}

// connErr is a connection error: GOAWAY with code, then close.
type connErr struct {
	code h2.ErrCode
	msg  string
}

func (e connErr) Error() string { return fmt.Sprintf("http2 %v: %s", e.code, e.msg) }

// streamErr is a stream error: RST_STREAM with code; the connection goes on.
type streamErr struct {
	sid  uint32
	code h2.ErrCode
	msg  string
}

func (e streamErr) Error() string { return fmt.Sprintf("stream %d: %v: %s", e.sid, e.code, e.msg) }

// frameHeader is the 9-byte header of every frame.
type frameHeader struct {
	length uint32
	typ    h2.FrameType
	flags  uint8
	sid    uint32
}

func parseFrameHeader(h []byte) frameHeader {
	return frameHeader{
		length: uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2]),
		typ:    h2.FrameType(h[3]),
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
		return nil, connErr{h2.ErrCodeFrameSize, fmt.Sprintf("%v frame of %d bytes, above the %d advertised", h.typ, h.length, maxFrameSize)}
	}
	p, err := fr.readPayload(h.length)
	if err != nil {
		return nil, err
	}
	f := &frame{frameHeader: h, payload: p}
	var size bool // the payload's size is wrong for the type
	switch h.typ {
	case h2.FrameHeaders:
		return fr.readHeaders(f)
	case h2.FrameContinuation:
		return nil, connErr{h2.ErrCodeProtocol, "CONTINUATION without HEADERS"}
	case h2.FrameSettings:
		size = h.length%6 != 0 || (f.has(h2.FlagAck) && h.length != 0)
	case h2.FramePing:
		size = h.length != 8
	case h2.FrameGoAway:
		size = h.length < 8
	case h2.FrameWindowUpdate, h2.FrameRSTStream:
		size = h.length != 4
	case h2.FramePriority:
		if h.length != 5 && h.sid != 0 {
			return f, streamErr{h.sid, h2.ErrCodeFrameSize, fmt.Sprintf("PRIORITY of %d bytes", h.length)}
		}
	}
	if size {
		return nil, connErr{h2.ErrCodeFrameSize, fmt.Sprintf("%v frame of %d bytes", h.typ, h.length)}
	}
	switch h.typ {
	case h2.FrameSettings, h2.FramePing, h2.FrameGoAway:
		if h.sid != 0 {
			return nil, connErr{h2.ErrCodeProtocol, fmt.Sprintf("%v on stream %d", h.typ, h.sid)}
		}
	case h2.FrameRSTStream, h2.FramePriority, h2.FramePushPromise:
		if h.sid == 0 {
			return nil, connErr{h2.ErrCodeProtocol, fmt.Sprintf("%v on stream 0", h.typ)}
		}
	case h2.FrameWindowUpdate:
		if binary.BigEndian.Uint32(p)&(1<<31-1) == 0 {
			if h.sid == 0 {
				return nil, connErr{h2.ErrCodeProtocol, "WINDOW_UPDATE of 0 on the connection"}
			}
			return f, streamErr{h.sid, h2.ErrCodeProtocol, "WINDOW_UPDATE of 0"}
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
		return nil, connErr{h2.ErrCodeProtocol, "HEADERS on stream 0"}
	}
	frag := f.payload
	if f.has(h2.FlagPadded) {
		if len(frag) < 1 || int(frag[0]) > len(frag)-1 {
			return nil, connErr{h2.ErrCodeProtocol, "HEADERS padding longer than the frame"}
		}
		frag = frag[1 : len(frag)-int(frag[0])]
	}
	if f.has(h2.FlagPriority) {
		if len(frag) < 5 {
			return nil, connErr{h2.ErrCodeFrameSize, "HEADERS too short for its priority"}
		}
		frag = frag[5:]
	}
	fr.fields, fr.listSize, fr.fieldErr, fr.sawReg = nil, 0, "", false
	end := f.has(h2.FlagEndHeaders)
	for {
		if _, err := fr.hdec.Write(frag); err != nil {
			return nil, connErr{h2.ErrCodeCompression, fmt.Sprintf("decoding the header block: %v", err)}
		}
		if fr.listSize > maxHeaderList {
			// Reading on would let a peer keep this loop busy with CONTINUATIONs.
			return nil, connErr{h2.ErrCodeProtocol, fmt.Sprintf("header list larger than the %d bytes advertised", maxHeaderList)}
		}
		if end {
			break
		}
		var hb [h2.FrameHeaderLen]byte
		if _, err := io.ReadFull(fr.r, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		ch := parseFrameHeader(hb[:])
		if ch.typ != h2.FrameContinuation || ch.sid != f.sid {
			return nil, connErr{h2.ErrCodeProtocol, fmt.Sprintf("%v while the header block of stream %d continues", ch, f.sid)}
		}
		if ch.length > maxFrameSize {
			return nil, connErr{h2.ErrCodeFrameSize, fmt.Sprintf("CONTINUATION of %d bytes, above the %d advertised", ch.length, maxFrameSize)}
		}
		p, err := fr.readPayload(ch.length)
		if err != nil {
			return nil, err
		}
		frag, end = p, ch.flags&h2.FlagEndHeaders != 0
	}
	if err := fr.hdec.Close(); err != nil {
		return nil, connErr{h2.ErrCodeCompression, fmt.Sprintf("decoding the header block: %v", err)}
	}
	f.payload, f.fields = nil, fr.fields
	f.flags |= h2.FlagEndHeaders
	if fr.fieldErr != "" {
		return f, streamErr{f.sid, h2.ErrCodeProtocol, fr.fieldErr}
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

func (c *conn) writeFrameHeaderLocked(length int, t h2.FrameType, flags uint8, sid uint32) error {
	h := &c.hdr
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3], h[4] = byte(t), flags
	binary.BigEndian.PutUint32(h[5:], sid)
	_, err := c.bw.Write(h[:])
	return err
}

func (c *conn) writeSettingsLocked(ss ...setting) error {
	if err := c.writeFrameHeaderLocked(6*len(ss), h2.FrameSettings, 0, 0); err != nil {
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
	return c.writeFrameHeaderLocked(0, h2.FrameSettings, h2.FlagAck, 0)
}

// write4Locked writes a frame whose payload is one 32-bit word (WINDOW_UPDATE, RST_STREAM).
func (c *conn) write4Locked(t h2.FrameType, sid, v uint32) error {
	if err := c.writeFrameHeaderLocked(4, t, 0, sid); err != nil {
		return err
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	_, err := c.bw.Write(b[:])
	return err
}

func (c *conn) writeWindowUpdateLocked(sid, incr uint32) error {
	return c.write4Locked(h2.FrameWindowUpdate, sid, incr)
}

func (c *conn) writeRSTLocked(sid uint32, code h2.ErrCode) error {
	return c.write4Locked(h2.FrameRSTStream, sid, uint32(code))
}

func (c *conn) writePingLocked(ack bool, data [8]byte) error {
	var flags uint8
	if ack {
		flags = h2.FlagAck
	}
	if err := c.writeFrameHeaderLocked(8, h2.FramePing, flags, 0); err != nil {
		return err
	}
	_, err := c.bw.Write(data[:])
	return err
}

func (c *conn) writeGoAwayLocked(last uint32, code h2.ErrCode) error {
	if err := c.writeFrameHeaderLocked(8, h2.FrameGoAway, 0, 0); err != nil {
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
	t, flags := h2.FrameContinuation, uint8(0)
	if first {
		t = h2.FrameHeaders
		if endStream {
			flags |= h2.FlagEndStream
		}
	}
	if endHeaders {
		flags |= h2.FlagEndHeaders
	}
	if err := c.writeFrameHeaderLocked(len(frag), t, flags, sid); err != nil {
		return err
	}
	_, err := c.bw.Write(frag)
	return err
}
