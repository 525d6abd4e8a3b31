package hbone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// The read side: one goroutine per connection reads frames, delivers DATA into
// stream buffers and never blocks on the write lock (it queues what it must send).

func (c *conn) readLoop() {
	defer c.wg.Done()
	err := c.readFrames()
	var ce connErr
	if errors.As(err, &ce) {
		c.shutdown(ce.code, err)
		return
	}
	if errors.Is(err, io.EOF) {
		err = io.EOF
	}
	c.closeWith(err)
}

func (c *conn) readFrames() error {
	settingsSeen := false
	for {
		hb, err := c.br.Peek(h2.FrameHeaderLen)
		if err != nil {
			return err
		}
		h := parseFrameHeader(hb)
		c.br.Discard(h2.FrameHeaderLen)
		if h.typ == h2.FrameData {
			if !settingsSeen {
				return connErr{h2.ErrCodeProtocol, "DATA before SETTINGS"}
			}
			if err := c.readData(h.length, h.flags, h.sid); err != nil {
				return err
			}
			continue
		}
		f, err := c.rfr.readFrame(h)
		if err != nil {
			var se streamErr
			if errors.As(err, &se) {
				c.resetStream(se.sid, se.code, fmt.Errorf("stream error: %w", se))
				if f.typ == h2.FrameHeaders && !c.client {
					c.mu.Lock()
					c.lastPeerID = max(c.lastPeerID, f.sid)
					c.mu.Unlock()
				}
				continue
			}
			return err
		}
		if !settingsSeen {
			if f.typ == h2.FrameGoAway {
				return fmt.Errorf("peer sent GOAWAY %v before SETTINGS: %q", h2.ErrCode(binary.BigEndian.Uint32(f.payload[4:])), f.payload[8:])
			}
			if f.typ != h2.FrameSettings || f.has(h2.FlagAck) {
				return connErr{h2.ErrCodeProtocol, fmt.Sprintf("first frame is %v, not SETTINGS", f.frameHeader)}
			}
			settingsSeen = true
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

func (c *conn) handleFrame(f *frame) error {
	switch f.typ {
	case h2.FrameSettings:
		return c.handleSettings(f)
	case h2.FrameHeaders:
		return c.handleHeaders(f)
	case h2.FrameWindowUpdate:
		return c.handleWindowUpdate(f.sid, binary.BigEndian.Uint32(f.payload)&(1<<31-1))
	case h2.FramePing:
		if f.has(h2.FlagAck) {
			c.mu.Lock()
			c.pingOut = false
			c.mu.Unlock()
			return nil
		}
		c.queue(ctlFrame{kind: ctlPingAck, data: [8]byte(f.payload)})
	case h2.FrameRSTStream:
		code := h2.ErrCode(binary.BigEndian.Uint32(f.payload))
		c.mu.Lock()
		s := c.streams[f.sid]
		if s != nil {
			s.resetLocked(fmt.Errorf("%w by peer: %v", ErrStreamReset, code))
		} else if c.idleStreamLocked(f.sid) {
			c.mu.Unlock()
			return connErr{h2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		c.mu.Unlock()
	case h2.FrameGoAway:
		last := binary.BigEndian.Uint32(f.payload) & (1<<31 - 1)
		code := h2.ErrCode(binary.BigEndian.Uint32(f.payload[4:]))
		c.mu.Lock()
		c.goaway = true
		for id, s := range c.streams {
			if c.client && id > last {
				s.resetLocked(fmt.Errorf("open stream: %w (GOAWAY %v)", errGoAway, code))
			}
		}
		empty := len(c.streams) == 0
		c.mu.Unlock()
		if empty {
			c.closeWith(fmt.Errorf("peer sent GOAWAY %v: %q", code, f.payload[8:]))
		}
	case h2.FramePushPromise:
		return connErr{h2.ErrCodeProtocol, "PUSH_PROMISE"}
	}
	// PRIORITY and unknown frames are ignored.
	return nil
}

// idleStreamLocked reports whether sid was never opened.
func (c *conn) idleStreamLocked(sid uint32) bool {
	if c.client {
		return sid%2 == 0 || sid >= c.nextID
	}
	return sid > c.lastPeerID
}

func (c *conn) handleSettings(f *frame) error {
	if f.has(h2.FlagAck) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := f.payload; len(p) >= 6; p = p[6:] {
		s := setting{h2.SettingID(binary.BigEndian.Uint16(p)), binary.BigEndian.Uint32(p[2:])}
		if err := s.check(); err != nil {
			return err
		}
		switch s.id {
		case h2.SettingMaxFrameSize:
			c.peerMaxFrame = min(s.val, maxFrameSize)
		case h2.SettingInitialWindowSize:
			delta := int64(s.val) - c.peerInitWin
			c.peerInitWin = int64(s.val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > maxWindow {
					return connErr{h2.ErrCodeFlowControl, "window overflow"}
				}
				st.cond.Broadcast()
			}
		case h2.SettingMaxConcurrentStreams:
			c.peerMaxStr = s.val
		case h2.SettingHeaderTableSize:
			c.peerTable = min(s.val, 4096)
		}
	}
	c.queue(ctlFrame{kind: ctlSettingsAck})
	return nil
}

func (c *conn) handleWindowUpdate(sid, incr uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sid == 0 {
		c.sendWin += int64(incr)
		if c.sendWin > maxWindow {
			return connErr{h2.ErrCodeFlowControl, "connection window overflow"}
		}
		for _, s := range c.streams {
			s.cond.Broadcast()
		}
		return nil
	}
	s := c.streams[sid]
	if s == nil {
		if c.idleStreamLocked(sid) {
			return connErr{h2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil
	}
	s.sendWin += int64(incr)
	if s.sendWin > maxWindow {
		s.resetLocked(errors.New("peer overflowed the stream window"))
		c.queue(ctlFrame{kind: ctlRST, sid: s.id, val: uint32(h2.ErrCodeFlowControl)})
		return nil
	}
	s.cond.Broadcast()
	return nil
}

// resetStream sends RST_STREAM for sid and fails the stream locally.
func (c *conn) resetStream(sid uint32, code h2.ErrCode, err error) {
	c.mu.Lock()
	if s := c.streams[sid]; s != nil {
		s.resetLocked(err)
	}
	c.mu.Unlock()
	c.queue(ctlFrame{kind: ctlRST, sid: sid, val: uint32(code)})
}

// readData reads one DATA frame's payload (after its header) straight into the
// stream's receive buffer.
func (c *conn) readData(length uint32, flags uint8, sid uint32) error {
	if sid == 0 {
		return connErr{h2.ErrCodeProtocol, "DATA on stream 0"}
	}
	if length > maxFrameSize {
		return connErr{h2.ErrCodeFrameSize, "DATA frame too large"}
	}
	payload := length
	var pad uint32
	if flags&h2.FlagPadded != 0 {
		if length == 0 {
			return connErr{h2.ErrCodeProtocol, "padded DATA without pad length"}
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = uint32(b)
		payload--
		if pad > payload {
			return connErr{h2.ErrCodeProtocol, "pad longer than DATA payload"}
		}
		payload -= pad
	}
	end := flags&h2.FlagEndStream != 0

	c.mu.Lock()
	if int64(length) > c.recvWin {
		c.mu.Unlock()
		return connErr{h2.ErrCodeFlowControl, "peer overran the connection window"}
	}
	c.recvWin -= int64(length)
	s := c.streams[sid]
	var code h2.ErrCode
	switch {
	case s == nil && c.idleStreamLocked(sid):
		c.mu.Unlock()
		return connErr{h2.ErrCodeProtocol, "DATA on idle stream"}
	case s == nil:
		// Closed or reset: drop it, but keep the connection window whole.
	case s.recvEnd || !s.readable():
		code = h2.ErrCodeStreamClosed
	case int64(length) > s.recvWin:
		code = h2.ErrCodeFlowControl
	}
	if s == nil || code != 0 {
		c.creditConnLocked(int64(length))
		if code != 0 {
			s.resetLocked(fmt.Errorf("stream error: %v", code))
		}
		c.mu.Unlock()
		if code != 0 {
			c.queue(ctlFrame{kind: ctlRST, sid: sid, val: uint32(code)})
		}
		_, err := c.br.Discard(int(payload + pad))
		return err
	}
	s.recvWin -= int64(length)
	if s.sink != nil && !s.sinkBusy && s.rb.n == 0 && payload > 0 {
		s.sinkBusy = true
		return c.deliverLocked(s, payload, pad, length, end)
	}
	buf := s.rb.reserve(int(payload))
	c.mu.Unlock()

	if _, err := io.ReadFull(c.br, buf); err != nil {
		return err
	}
	if pad > 0 {
		if _, err := c.br.Discard(int(pad)); err != nil {
			return err
		}
	}

	c.mu.Lock()
	if !s.rb.commit(int(payload)) {
		// The stream was closed while we filled its buffer.
		c.creditConnLocked(int64(payload))
	}
	if extra := int64(length - payload); extra > 0 {
		s.creditLocked(extra)
	}
	if end {
		s.recvEnd = true
		s.maybeDoneLocked()
	}
	s.cond.Broadcast()
	c.mu.Unlock()
	return nil
}
