package grpcwire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// HTTP/2 framing (RFC 9113 section 4), the part a gRPC client needs. Written here rather than
// taken from golang.org/x/net/http2, which imports net/http (issue #4: ztunnel's binary); the
// vocabulary is internal/h2's, shared with internal/hbone.

const (
	defaultMaxFrame = 16384 // SETTINGS_MAX_FRAME_SIZE until the peer says otherwise; also what we read
	maxFrameLimit   = 1<<24 - 1
	initialWindow   = 65535 // both windows until SETTINGS and WINDOW_UPDATE say otherwise
	maxWindow       = 1<<31 - 1
)

// frameHeader is the 9 bytes before every frame's payload.
type frameHeader struct {
	length   uint32
	typ      h2.FrameType
	flags    uint8
	streamID uint32
}

func (h frameHeader) String() string {
	return fmt.Sprintf("%v frame (flags %#x, stream %d, %d bytes)", h.typ, h.flags, h.streamID, h.length)
}

// connError is a connection error (RFC 9113 section 5.4.1): the client sends GOAWAY with code
// and closes the connection.
type connError struct {
	code h2.ErrCode
	msg  string
}

func (e *connError) Error() string { return "http2 " + e.code.String() + ": " + e.msg }

func protocolError(format string, args ...any) error {
	return &connError{h2.ErrCodeProtocol, fmt.Sprintf(format, args...)}
}

// readFrame reads one frame into buf (at least defaultMaxFrame bytes) and returns its header
// and payload, which is valid until the next call. A payload larger than buf is a connection
// error: this client never advertises frames larger than defaultMaxFrame.
func readFrame(br *bufio.Reader, buf []byte) (frameHeader, []byte, error) {
	var b [h2.FrameHeaderLen]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		return frameHeader{}, nil, err
	}
	h := frameHeader{
		length:   uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:      h2.FrameType(b[3]),
		flags:    b[4],
		streamID: binary.BigEndian.Uint32(b[5:]) & (1<<31 - 1),
	}
	if h.length > uint32(len(buf)) {
		return h, nil, &connError{h2.ErrCodeFrameSize, fmt.Sprintf("%v: larger than the %d bytes this client accepts", h, len(buf))}
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
	if h.flags&h2.FlagPadded == 0 {
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

// writeFrame writes one frame to w (buffered; the caller flushes).
func writeFrame(w *bufio.Writer, typ h2.FrameType, flags uint8, streamID uint32, payload []byte) error {
	var hb [h2.FrameHeaderLen]byte
	if _, err := w.Write(h2.AppendFrameHeader(hb[:0], len(payload), typ, flags, streamID)); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// u32 encodes v as the 4-byte payloads of RST_STREAM and WINDOW_UPDATE.
func u32(v uint32) []byte {
	return binary.BigEndian.AppendUint32(make([]byte, 0, 4), v)
}
