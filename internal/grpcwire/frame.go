package grpcwire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// HTTP/2 framing (RFC 9113 section 4), the part a gRPC client needs. Written here rather than
// taken from golang.org/x/net/http2, which imports net/http (issue #4: ztunnel's binary).

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
	return fmt.Sprintf("frame type %#x", uint8(t))
}

const (
	flagEndStream  = 0x1 // DATA, HEADERS
	flagAck        = 0x1 // SETTINGS, PING
	flagEndHeaders = 0x4 // HEADERS, CONTINUATION
	flagPadded     = 0x8 // DATA, HEADERS
	flagPriority   = 0x20
)

// The settings a client reads or sends (RFC 9113 section 6.5.2).
const (
	settingHeaderTableSize      = 0x1
	settingEnablePush           = 0x2
	settingMaxConcurrentStreams = 0x3
	settingInitialWindowSize    = 0x4
	settingMaxFrameSize         = 0x5
	settingMaxHeaderListSize    = 0x6
)

// errCode is an HTTP/2 error code (RFC 9113 section 7).
type errCode uint32

const (
	codeNo                 errCode = 0x0
	codeProtocol           errCode = 0x1
	codeInternal           errCode = 0x2
	codeFlowControl        errCode = 0x3
	codeSettingsTimeout    errCode = 0x4
	codeStreamClosed       errCode = 0x5
	codeFrameSize          errCode = 0x6
	codeRefusedStream      errCode = 0x7
	codeCancel             errCode = 0x8
	codeCompression        errCode = 0x9
	codeConnect            errCode = 0xa
	codeEnhanceYourCalm    errCode = 0xb
	codeInadequateSecurity errCode = 0xc
	codeHTTP11Required     errCode = 0xd
)

var errCodeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
	"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
	"ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

func (c errCode) String() string {
	if int(c) < len(errCodeNames) {
		return errCodeNames[c]
	}
	return fmt.Sprintf("error code %#x", uint32(c))
}

const (
	clientPreface   = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frameHeaderLen  = 9
	defaultMaxFrame = 16384 // SETTINGS_MAX_FRAME_SIZE until the peer says otherwise; also what we read
	maxFrameLimit   = 1<<24 - 1
	initialWindow   = 65535 // both windows until SETTINGS and WINDOW_UPDATE say otherwise
	maxWindow       = 1<<31 - 1
)

// frameHeader is the 9 bytes before every frame's payload.
type frameHeader struct {
	length   uint32
	typ      frameType
	flags    uint8
	streamID uint32
}

func (h frameHeader) String() string {
	return fmt.Sprintf("%v frame (flags %#x, stream %d, %d bytes)", h.typ, h.flags, h.streamID, h.length)
}

// connError is a connection error (RFC 9113 section 5.4.1): the client sends GOAWAY with code
// and closes the connection.
type connError struct {
	code errCode
	msg  string
}

func (e *connError) Error() string { return "http2 " + e.code.String() + ": " + e.msg }

func protocolError(format string, args ...any) error {
	return &connError{codeProtocol, fmt.Sprintf(format, args...)}
}

// readFrame reads one frame into buf (at least defaultMaxFrame bytes) and returns its header
// and payload, which is valid until the next call. A payload larger than buf is a connection
// error: this client never advertises frames larger than defaultMaxFrame.
func readFrame(br *bufio.Reader, buf []byte) (frameHeader, []byte, error) {
	var b [frameHeaderLen]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		return frameHeader{}, nil, err
	}
	h := frameHeader{
		length:   uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:      frameType(b[3]),
		flags:    b[4],
		streamID: binary.BigEndian.Uint32(b[5:]) & (1<<31 - 1),
	}
	if h.length > uint32(len(buf)) {
		return h, nil, &connError{codeFrameSize, fmt.Sprintf("%v: larger than the %d bytes this client accepts", h, len(buf))}
	}
	p := buf[:h.length]
	if _, err := io.ReadFull(br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, fmt.Errorf("reading %v: %w", h, err)
	}
	return h, p, nil
}

// unpad strips the padding of a DATA or HEADERS payload that has the PADDED flag.
func unpad(h frameHeader, p []byte) ([]byte, error) {
	if h.flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) == 0 {
		return nil, protocolError("%v: PADDED without a pad length", h)
	}
	pad := int(p[0])
	if pad > len(p)-1 {
		return nil, protocolError("%v: %d bytes of padding, more than the payload", h, pad)
	}
	return p[1 : len(p)-pad], nil
}

// appendFrameHeader appends a frame header to b.
func appendFrameHeader(b []byte, length int, typ frameType, flags uint8, streamID uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), flags,
		byte(streamID>>24), byte(streamID>>16), byte(streamID>>8), byte(streamID))
}

// writeFrame writes one frame to w (buffered; the caller flushes).
func writeFrame(w *bufio.Writer, typ frameType, flags uint8, streamID uint32, payload []byte) error {
	var hb [frameHeaderLen]byte
	if _, err := w.Write(appendFrameHeader(hb[:0], len(payload), typ, flags, streamID)); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// u32 encodes v as the 4-byte payloads of RST_STREAM and WINDOW_UPDATE.
func u32(v uint32) []byte {
	return binary.BigEndian.AppendUint32(make([]byte, 0, 4), v)
}
