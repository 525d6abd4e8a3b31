package grpcwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// The read side of a transport: one goroutine reads every frame the server sends.

func (t *transport) readLoop() {
	defer t.wg.Done()
	err := t.readFrames()
	if errors.Is(err, io.EOF) {
		err = errors.New("the server closed the connection")
	}
	// The streams fail with the server's fault before the GOAWAY tells it, and it hangs up.
	var ce *connError
	if errors.As(err, &ce) && t.fail(err) {
		t.sendGoAway(ce.code, ce.msg)
	}
	t.closeWith(err)
}

// headerBlock is a HEADERS frame's block waiting for its CONTINUATION frames.
type headerBlock struct {
	sid       uint32
	endStream bool
	b         []byte
}

func (t *transport) readFrames() error {
	if err := t.checkPreface(); err != nil {
		return err
	}
	buf := make([]byte, defaultMaxFrame)
	var block *headerBlock
	for {
		h, p, err := readFrame(t.br, buf)
		if err != nil {
			return err
		}
		if block != nil && (h.typ != h2.FrameContinuation || h.streamID != block.sid) {
			return protocolError("%v while the header block of stream %d awaits CONTINUATION", h, block.sid)
		}
		switch h.typ {
		case h2.FrameData:
			err = t.handleData(h, p)
		case h2.FrameHeaders:
			if block, err = startHeaders(h, p); err == nil && h.flags&h2.FlagEndHeaders != 0 {
				err = t.handleHeaders(block)
				block = nil
			}
		case h2.FrameContinuation:
			if block == nil {
				return protocolError("%v without HEADERS before it", h)
			}
			if len(block.b)+len(p) > maxHeaderBlock {
				return &connError{h2.ErrCodeEnhanceYourCalm, fmt.Sprintf("a header block of stream %d longer than %d bytes", block.sid, maxHeaderBlock)}
			}
			block.b = append(block.b, p...)
			if h.flags&h2.FlagEndHeaders != 0 {
				err = t.handleHeaders(block)
				block = nil
			}
		case h2.FrameRSTStream:
			err = t.handleRST(h, p)
		case h2.FrameSettings:
			err = t.handleSettings(h, p)
		case h2.FramePushPromise:
			return protocolError("%v: this client disabled push", h)
		case h2.FramePing:
			err = t.handlePing(h, p)
		case h2.FrameGoAway:
			err = t.handleGoAway(h, p)
		case h2.FrameWindowUpdate:
			err = t.handleWindowUpdate(h, p)
		}
		// PRIORITY and frame types this client does not know are ignored, as RFC 9113 says.
		if err != nil {
			return err
		}
		t.mu.Lock()
		backlog := len(t.ctlq)
		t.mu.Unlock()
		if backlog > maxCtlQueue {
			return &connError{h2.ErrCodeEnhanceYourCalm, fmt.Sprintf("the server asks for more than %d frames without reading them", maxCtlQueue)}
		}
	}
}

// checkPreface checks that the server's first frame is SETTINGS (or the GOAWAY of a server
// that refuses us). What is not a frame at all is an HTTP/1.1 answer to our preface, or a TLS
// alert on a plaintext port: the error shows it.
func (t *transport) checkPreface() error {
	b, err := t.br.Peek(h2.FrameHeaderLen)
	if err != nil {
		return err
	}
	length, typ, flags := int(b[0])<<16|int(b[1])<<8|int(b[2]), h2.FrameType(b[3]), b[4]
	switch {
	case typ == h2.FrameSettings && flags&h2.FlagAck == 0, typ == h2.FrameGoAway:
		return nil
	case typ <= h2.FrameContinuation && length <= defaultMaxFrame:
		return protocolError("the server's first frame is a %v, not SETTINGS", typ)
	}
	return protocolError("the server's first bytes %q are not an HTTP/2 frame: is it an HTTP/2 server (h2c, or TLS with ALPN h2)?", b)
}

func startHeaders(h frameHeader, p []byte) (*headerBlock, error) {
	if h.streamID == 0 {
		return nil, protocolError("%v on stream 0", h)
	}
	p, err := unpad(h, p)
	if err != nil {
		return nil, err
	}
	if h.flags&h2.FlagPriority != 0 {
		if len(p) < 5 {
			return nil, &connError{h2.ErrCodeFrameSize, fmt.Sprintf("%v: PRIORITY flag without its 5 bytes", h)}
		}
		p = p[5:]
	}
	return &headerBlock{sid: h.streamID, endStream: h.flags&h2.FlagEndStream != 0, b: append([]byte(nil), p...)}, nil
}

func (t *transport) handleData(h frameHeader, p []byte) error {
	if h.streamID == 0 {
		return protocolError("%v on stream 0", h)
	}
	data, err := unpad(h, p)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := int64(h.length)
	if n > t.recvWin {
		return &connError{h2.ErrCodeFlowControl, fmt.Sprintf("%v: beyond the connection window of %d bytes", h, t.recvWin)}
	}
	t.recvWin -= n
	t.creditConnLocked(n)
	s := t.streams[h.streamID]
	switch {
	case s == nil && t.idleLocked(h.streamID):
		return protocolError("%v: a stream this client did not open", h)
	case s == nil:
		// A stream already over (cancelled, reset): its data is dropped.
	case !s.gotHeader:
		t.resetLocked(s, h2.ErrCodeProtocol, "DATA before the response headers")
	case s.recvEnd:
		t.resetLocked(s, h2.ErrCodeStreamClosed, "DATA after END_STREAM")
	case n > s.recvWin:
		t.resetLocked(s, h2.ErrCodeFlowControl, fmt.Sprintf("%d bytes of DATA beyond the stream window of %d", n, s.recvWin))
	default:
		s.recvWin -= n
		s.buf = append(s.buf, data...)
		s.creditLocked(n - int64(len(data))) // padding is consumed at once
		if h.flags&h2.FlagEndStream != 0 {
			s.endRecvLocked()
		}
		poke(s.recvCh)
	}
	return nil
}

// handleHeaders decodes a complete header block: the response headers, or the trailers.
func (t *transport) handleHeaders(b *headerBlock) error {
	// Decoded even for a stream that is over: the HPACK table is the connection's.
	fields, err := t.hdec.DecodeFull(b.b)
	if err != nil {
		return &connError{h2.ErrCodeCompression, fmt.Sprintf("decoding the headers of stream %d: %v", b.sid, err)}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[b.sid]
	if s == nil {
		if t.idleLocked(b.sid) {
			return protocolError("HEADERS on stream %d, which this client did not open", b.sid)
		}
		return nil
	}
	if s.recvEnd {
		t.resetLocked(s, h2.ErrCodeStreamClosed, "HEADERS after END_STREAM")
		return nil
	}
	size := 0
	for _, f := range fields {
		size += int(f.Size())
	}
	if size > maxHeaderBytes {
		t.resetLocked(s, h2.ErrCodeProtocol, fmt.Sprintf("%d bytes of header fields, more than the %d this client accepts", size, maxHeaderBytes))
		return nil
	}
	m, status, err := fieldMap(fields, !s.gotHeader)
	switch {
	case err != nil:
		t.resetLocked(s, h2.ErrCodeProtocol, err.Error())
		return nil
	case !s.gotHeader && status < 200:
		if b.endStream {
			t.resetLocked(s, h2.ErrCodeProtocol, fmt.Sprintf("informational :status %d with END_STREAM", status))
		}
		return nil // an informational response: the final one follows
	case !s.gotHeader:
		s.gotHeader, s.status, s.header = true, status, m
	case !b.endStream:
		t.resetLocked(s, h2.ErrCodeProtocol, "a second header block without END_STREAM")
		return nil
	default:
		s.trailer = m
	}
	if b.endStream {
		s.endRecvLocked()
	}
	poke(s.recvCh)
	return nil
}

// fieldMap returns the regular fields (their first values, by name) and, for a response's
// headers, the :status.
func fieldMap(fields []hpack.HeaderField, response bool) (map[string]string, int, error) {
	m := make(map[string]string, len(fields))
	status := -1
	for _, f := range fields {
		if strings.HasPrefix(f.Name, ":") {
			if !response || f.Name != ":status" || status != -1 {
				return nil, 0, fmt.Errorf("unexpected pseudo-header %q", f.Name)
			}
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 100 || n > 999 {
				return nil, 0, fmt.Errorf(":status %q is not a status code", f.Value)
			}
			status = n
			continue
		}
		if _, ok := m[f.Name]; !ok {
			m[f.Name] = f.Value
		}
	}
	if response && status == -1 {
		return nil, 0, errors.New("response headers without :status")
	}
	return m, status, nil
}

func (t *transport) handleRST(h frameHeader, p []byte) error {
	if h.streamID == 0 {
		return protocolError("%v on stream 0", h)
	}
	if len(p) != 4 {
		return &connError{h2.ErrCodeFrameSize, h.String()}
	}
	code := h2.ErrCode(binary.BigEndian.Uint32(p))
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[h.streamID]
	if s == nil {
		if t.idleLocked(h.streamID) {
			return protocolError("%v: a stream this client did not open", h)
		}
		return nil
	}
	if s.recvEnd && code == h2.ErrCodeNo {
		// The response is complete and the server wants no more of the request.
		s.failLocked(errServerDone)
	} else {
		s.failLocked(&resetError{code: code})
	}
	t.removeLocked(s)
	return nil
}

func (t *transport) handleSettings(h frameHeader, p []byte) error {
	if h.streamID != 0 {
		return protocolError("%v not on stream 0", h)
	}
	if h.flags&h2.FlagAck != 0 {
		if len(p) != 0 {
			return &connError{h2.ErrCodeFrameSize, fmt.Sprintf("%v: an ACK with a payload", h)}
		}
		return nil
	}
	if len(p)%6 != 0 {
		return &connError{h2.ErrCodeFrameSize, fmt.Sprintf("%v: not a whole number of settings", h)}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for ; len(p) > 0; p = p[6:] {
		id, v := h2.SettingID(binary.BigEndian.Uint16(p)), binary.BigEndian.Uint32(p[2:])
		switch id {
		case h2.SettingHeaderTableSize:
			t.peerTable = min(v, 4096)
		case h2.SettingEnablePush:
			if v != 0 {
				return protocolError("SETTINGS_ENABLE_PUSH %d from a server", v)
			}
		case h2.SettingMaxConcurrentStreams:
			t.peerMaxStreams = v
		case h2.SettingInitialWindowSize:
			if v > maxWindow {
				return &connError{h2.ErrCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d", v)}
			}
			delta := int64(v) - t.peerInitWin
			t.peerInitWin = int64(v)
			for _, s := range t.streams {
				s.sendWin += delta
				if s.sendWin > maxWindow {
					return &connError{h2.ErrCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d overflows the window of stream %d", v, s.id)}
				}
				poke(s.sendCh)
			}
		case h2.SettingMaxFrameSize:
			if v < defaultMaxFrame || v > maxFrameLimit {
				return protocolError("SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			t.peerMaxFrame = v
		}
		// SETTINGS_MAX_HEADER_LIST_SIZE: a call's headers are small. Unknown settings are
		// ignored.
	}
	t.settingsSeen = true
	t.signalSlotLocked()
	t.queueLocked(ctlFrame{typ: h2.FrameSettings, flags: h2.FlagAck})
	return nil
}

func (t *transport) handlePing(h frameHeader, p []byte) error {
	if h.streamID != 0 {
		return protocolError("%v not on stream 0", h)
	}
	if len(p) != 8 {
		return &connError{h2.ErrCodeFrameSize, h.String()}
	}
	if h.flags&h2.FlagAck != 0 {
		return nil // this client sends no PING
	}
	t.mu.Lock()
	t.queueLocked(ctlFrame{typ: h2.FramePing, flags: h2.FlagAck, payload: append([]byte(nil), p...)})
	t.mu.Unlock()
	return nil
}

// handleGoAway stops new streams; those the server did not process fail, the others finish,
// then the connection closes.
func (t *transport) handleGoAway(h frameHeader, p []byte) error {
	if h.streamID != 0 {
		return protocolError("%v not on stream 0", h)
	}
	if len(p) < 8 {
		return &connError{h2.ErrCodeFrameSize, h.String()}
	}
	last := binary.BigEndian.Uint32(p) & maxStreamID
	code := h2.ErrCode(binary.BigEndian.Uint32(p[4:]))
	debug := p[8:]
	if len(debug) > 256 {
		debug = debug[:256]
	}
	ga := &refusedError{code: code, debug: string(debug)}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.goAway = true
	for id, s := range t.streams {
		if id > last {
			s.failLocked(ga)
			delete(t.streams, id)
		}
	}
	t.signalSlotLocked()
	if len(t.streams) == 0 {
		return fmt.Errorf("the server sent GOAWAY (%v, %q)", code, debug)
	}
	return nil
}

func (t *transport) handleWindowUpdate(h frameHeader, p []byte) error {
	if len(p) != 4 {
		return &connError{h2.ErrCodeFrameSize, h.String()}
	}
	inc := int64(binary.BigEndian.Uint32(p) & maxWindow)
	t.mu.Lock()
	defer t.mu.Unlock()
	if h.streamID == 0 {
		if inc == 0 {
			return protocolError("%v: an increment of 0", h)
		}
		t.sendWin += inc
		if t.sendWin > maxWindow {
			return &connError{h2.ErrCodeFlowControl, fmt.Sprintf("%v: the connection window overflows", h)}
		}
		for _, s := range t.streams {
			poke(s.sendCh)
		}
		return nil
	}
	s := t.streams[h.streamID]
	switch {
	case s == nil && t.idleLocked(h.streamID):
		return protocolError("%v: a stream this client did not open", h)
	case s == nil:
	case inc == 0:
		t.resetLocked(s, h2.ErrCodeProtocol, "WINDOW_UPDATE with an increment of 0")
	case s.sendWin+inc > maxWindow:
		t.resetLocked(s, h2.ErrCodeFlowControl, "WINDOW_UPDATE overflows the stream window")
	default:
		s.sendWin += inc
		poke(s.sendCh)
	}
	return nil
}
