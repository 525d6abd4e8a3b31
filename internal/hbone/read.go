package hbone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
)

// The read side: one goroutine per connection reads frames, delivers DATA into
// stream buffers and never blocks on the write lock (it queues what it must send).

// connErr is a connection error: GOAWAY with code, then close.
type connErr struct {
	code http2.ErrCode
	msg  string
}

func (e connErr) Error() string { return fmt.Sprintf("http2 %v: %s", e.code, e.msg) }

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
		h, err := c.br.Peek(9)
		if err != nil {
			return err
		}
		if http2.FrameType(h[3]) == http2.FrameData {
			if !settingsSeen {
				return connErr{http2.ErrCodeProtocol, "DATA before SETTINGS"}
			}
			length := uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
			flags := http2.Flags(h[4])
			sid := binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1)
			c.br.Discard(9)
			if err := c.readData(length, flags, sid); err != nil {
				return err
			}
			continue
		}
		f, err := c.rfr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, fmt.Errorf("stream error: %w", se))
				if mh, ok := f.(*http2.MetaHeadersFrame); ok && !c.client {
					c.mu.Lock()
					c.lastPeerID = max(c.lastPeerID, mh.StreamID)
					c.mu.Unlock()
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connErr{http2.ErrCode(ce), err.Error()}
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return connErr{http2.ErrCodeFrameSize, err.Error()}
			}
			return err
		}
		if !settingsSeen {
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				return fmt.Errorf("peer sent GOAWAY %v before SETTINGS: %q", ga.ErrCode, ga.DebugData())
			}
			sf, ok := f.(*http2.SettingsFrame)
			if !ok || sf.IsAck() {
				return connErr{http2.ErrCodeProtocol, fmt.Sprintf("first frame is %v, not SETTINGS", f.Header())}
			}
			settingsSeen = true
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

func (c *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingOut = false
			c.mu.Unlock()
			return nil
		}
		c.queue(ctlFrame{kind: ctlPingAck, data: f.Data})
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		s := c.streams[f.StreamID]
		if s != nil {
			s.resetLocked(fmt.Errorf("%w by peer: %v", ErrStreamReset, f.ErrCode))
		} else if c.idleStreamLocked(f.StreamID) {
			c.mu.Unlock()
			return connErr{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goaway = true
		for id, s := range c.streams {
			if c.client && id > f.LastStreamID {
				s.resetLocked(fmt.Errorf("open stream: %w (GOAWAY %v)", errGoAway, f.ErrCode))
			}
		}
		empty := len(c.streams) == 0
		c.mu.Unlock()
		if empty {
			c.closeWith(fmt.Errorf("peer sent GOAWAY %v: %q", f.ErrCode, f.DebugData()))
		}
	case *http2.PushPromiseFrame:
		return connErr{http2.ErrCodeProtocol, "PUSH_PROMISE"}
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

func (c *conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connErr{http2.ErrCode(ce), err.Error()}
			}
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = min(s.Val, maxFrameSize)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > maxWindow {
					return connErr{http2.ErrCodeFlowControl, "window overflow"}
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStr = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTable = min(s.Val, 4096)
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queue(ctlFrame{kind: ctlSettingsAck})
	return nil
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWin += int64(f.Increment)
		if c.sendWin > maxWindow {
			return connErr{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		for _, s := range c.streams {
			s.cond.Broadcast()
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if c.idleStreamLocked(f.StreamID) {
			return connErr{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil
	}
	s.sendWin += int64(f.Increment)
	if s.sendWin > maxWindow {
		s.resetLocked(errors.New("peer overflowed the stream window"))
		c.queue(ctlFrame{kind: ctlRST, sid: s.id, val: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	s.cond.Broadcast()
	return nil
}

// resetStream sends RST_STREAM for sid and fails the stream locally.
func (c *conn) resetStream(sid uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	if s := c.streams[sid]; s != nil {
		s.resetLocked(err)
	}
	c.mu.Unlock()
	c.queue(ctlFrame{kind: ctlRST, sid: sid, val: uint32(code)})
}

// readData reads one DATA frame's payload (after its header) straight into the
// stream's receive buffer.
func (c *conn) readData(length uint32, flags http2.Flags, sid uint32) error {
	if sid == 0 {
		return connErr{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	if length > maxFrameSize {
		return connErr{http2.ErrCodeFrameSize, "DATA frame too large"}
	}
	payload := length
	var pad uint32
	if flags.Has(http2.FlagDataPadded) {
		if length == 0 {
			return connErr{http2.ErrCodeProtocol, "padded DATA without pad length"}
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = uint32(b)
		payload--
		if pad > payload {
			return connErr{http2.ErrCodeProtocol, "pad longer than DATA payload"}
		}
		payload -= pad
	}
	end := flags.Has(http2.FlagDataEndStream)

	c.mu.Lock()
	if int64(length) > c.recvWin {
		c.mu.Unlock()
		return connErr{http2.ErrCodeFlowControl, "peer overran the connection window"}
	}
	c.recvWin -= int64(length)
	s := c.streams[sid]
	var code http2.ErrCode
	switch {
	case s == nil && c.idleStreamLocked(sid):
		c.mu.Unlock()
		return connErr{http2.ErrCodeProtocol, "DATA on idle stream"}
	case s == nil:
		// Closed or reset: drop it, but keep the connection window whole.
	case s.recvEnd || !s.readable():
		code = http2.ErrCodeStreamClosed
	case int64(length) > s.recvWin:
		code = http2.ErrCodeFlowControl
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
