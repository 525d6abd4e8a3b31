package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/h2"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/tcpio"
)

// ErrWriteClosed is returned by Write after CloseWrite.
var ErrWriteClosed = errors.New("hbone stream: write after CloseWrite")

// Stream is one accepted HBONE tunnel: a bidirectional byte stream carried by
// an HTTP/2 CONNECT stream. It implements net.Conn. Read returns io.EOF after
// the peer half-closed (END_STREAM); CloseWrite half-closes our side. Close
// ends the stream: gracefully (END_STREAM) when the peer already finished
// sending, otherwise with RST_STREAM(CANCEL). Deadlines interrupt waits for
// data and for flow-control window; a Write blocked on the socket itself is
// bounded by the connection's PING timeout instead.
//
// Read, Write and Close may be called concurrently; concurrent Writes are
// serialized.
type Stream struct {
	c    *conn
	id   uint32
	cond sync.Cond // L is &c.mu

	wmu sync.Mutex // serializes Write and CloseWrite

	// Guarded by c.mu:
	rb          recvBuf
	recvWin     int64 // receive window left to the peer
	recvUnacked int64 // consumed, not yet credited
	sendWin     int64
	recvEnd     bool  // peer sent END_STREAM
	sentEnd     bool  // we sent END_STREAM
	resetErr    error // reset by either side
	closed      bool  // Close called
	headersDone bool  // client: final response headers arrived
	status      int   // client: response :status
	rdl, wdl    deadline

	// Direct delivery (deliver.go), guarded by c.mu:
	sink      *tcpio.Conn // CopyTo's TCP socket, which the read loop may write to
	sinkCount func(int64) // CopyTo's count
	sinkBusy  bool        // the read loop or CopyTo is writing to the sink
	sinkN     int64       // bytes the read loop wrote to the sink
	sinkErr   error       // a write of the read loop to the sink failed
}

type deadline struct {
	t     time.Time
	timer *time.Timer
}

func (d *deadline) expired() bool { return !d.t.IsZero() && !time.Now().Before(d.t) }

func newStream(c *conn, id uint32) *Stream {
	s := &Stream{c: c, id: id, recvWin: streamWindow, sendWin: c.peerInitWin}
	s.cond.L = &c.mu
	return s
}

// readable reports whether the stream still takes DATA; c.mu held.
func (s *Stream) readable() bool { return s.resetErr == nil && !s.closed }

// Peer returns the verified identity of the other side.
func (s *Stream) Peer() identity.Identity { return s.c.peer }

// LocalAddr returns the outer connection's local address.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr returns the outer connection's remote address.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// Read reads tunnelled bytes. Buffered data is returned before io.EOF or a reset error.
func (s *Stream) Read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.rb.n > 0 {
			if len(p) == 0 {
				return 0, nil
			}
			n := s.rb.read(p)
			s.creditLocked(int64(n))
			return n, nil
		}
		switch {
		case s.recvEnd:
			return 0, io.EOF
		case s.closed:
			return 0, net.ErrClosed
		case s.resetErr != nil:
			return 0, s.resetErr
		case c.err != nil:
			return 0, fmt.Errorf("%w: %w", ErrConnClosed, c.err)
		case s.rdl.expired():
			return 0, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
}

// creditLocked returns n consumed bytes of window to the peer, in batches.
func (s *Stream) creditLocked(n int64) {
	c := s.c
	c.creditConnLocked(n)
	if s.recvEnd || s.resetErr != nil || c.err != nil {
		return
	}
	s.recvUnacked += n
	if s.recvUnacked >= streamUpdateThreshold {
		c.queue(ctlFrame{kind: ctlWindowUpdate, sid: s.id, val: uint32(s.recvUnacked)})
		s.recvWin += s.recvUnacked
		s.recvUnacked = 0
	}
}

// writeErrLocked returns why the stream cannot send, or nil.
func (s *Stream) writeErrLocked() error {
	c := s.c
	switch {
	case s.sentEnd:
		return ErrWriteClosed
	case s.closed:
		return net.ErrClosed
	case s.resetErr != nil:
		return s.resetErr
	case c.err != nil:
		return fmt.Errorf("%w: %w", ErrConnClosed, c.err)
	case s.wdl.expired():
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Write sends p as DATA frames as large as the peer and the windows allow.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for {
			if err := s.writeErrLocked(); err != nil {
				c.mu.Unlock()
				return written, err
			}
			if s.sendWin > 0 && c.sendWin > 0 {
				break
			}
			s.cond.Wait()
		}
		n := int64(len(p))
		n = min(n, s.sendWin, c.sendWin, int64(c.peerMaxFrame))
		s.sendWin -= n
		c.sendWin -= n
		c.mu.Unlock()

		c.lockWrite()
		err := c.writeDataLocked(s.id, p[:n], false)
		if err != nil {
			c.releaseWrite()
			c.closeWith(fmt.Errorf("write: %w", err))
			return written, fmt.Errorf("%w: %w", ErrConnClosed, err)
		}
		unlock := c.unlockWrite
		if n <= soonMax {
			unlock = c.unlockWriteSoon
		}
		if err := unlock(); err != nil {
			return written, fmt.Errorf("%w: %w", ErrConnClosed, err)
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// CloseWrite half-closes the stream: the peer reads EOF once it has read
// everything written before. Reading continues to work.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.closeWrite()
}

func (s *Stream) closeWrite() error {
	c := s.c
	c.mu.Lock()
	if err := s.writeErrLocked(); err != nil {
		c.mu.Unlock()
		if errors.Is(err, ErrWriteClosed) {
			return nil
		}
		return err
	}
	c.mu.Unlock()
	c.lockWrite()
	if err := c.writeDataLocked(s.id, nil, true); err != nil {
		c.releaseWrite()
		c.closeWith(fmt.Errorf("write: %w", err))
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	err := c.unlockWrite()
	c.mu.Lock()
	s.sentEnd = true
	s.maybeDoneLocked()
	c.mu.Unlock()
	return err
}

// Close ends the stream and releases its buffers. See the type's documentation.
func (s *Stream) Close() error {
	c := s.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return nil
	}
	graceful := s.recvEnd && !s.sentEnd && s.resetErr == nil && c.err == nil
	abort := !s.recvEnd && s.resetErr == nil && c.err == nil
	c.mu.Unlock()
	if graceful && s.wmu.TryLock() {
		s.closeWrite()
		s.wmu.Unlock()
	} else if graceful {
		abort = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if abort && s.resetErr == nil && !(s.recvEnd && s.sentEnd) {
		c.queue(ctlFrame{kind: ctlRST, sid: s.id, val: uint32(h2.ErrCodeCancel)})
		s.resetErr = net.ErrClosed
	}
	c.creditConnLocked(int64(s.rb.discard()))
	s.stopTimersLocked()
	c.removeLocked(s)
	s.cond.Broadcast()
	return nil
}

// resetLocked fails the stream (RST_STREAM received or sent by the library).
func (s *Stream) resetLocked(err error) {
	if s.resetErr == nil {
		s.resetErr = err
	}
	s.c.removeLocked(s)
	s.cond.Broadcast()
}

// maybeDoneLocked removes the stream from the connection once both sides ended.
func (s *Stream) maybeDoneLocked() {
	if s.recvEnd && s.sentEnd {
		s.c.removeLocked(s)
	}
}

func (s *Stream) stopTimersLocked() {
	for _, d := range []*deadline{&s.rdl, &s.wdl} {
		if d.timer != nil {
			d.timer.Stop()
			d.timer = nil
		}
	}
}

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.setDeadline(&s.rdl, t)
	s.setDeadline(&s.wdl, t)
	return nil
}

// SetReadDeadline bounds waits in Read.
func (s *Stream) SetReadDeadline(t time.Time) error { s.setDeadline(&s.rdl, t); return nil }

// SetWriteDeadline bounds waits for flow-control window in Write.
func (s *Stream) SetWriteDeadline(t time.Time) error { s.setDeadline(&s.wdl, t); return nil }

func (s *Stream) setDeadline(d *deadline, t time.Time) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	d.t = t
	if t.IsZero() || s.closed {
		if d.timer != nil {
			d.timer.Stop()
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		s.cond.Broadcast()
		return
	}
	if d.timer != nil {
		d.timer.Reset(dur) // reused: a proxy moving its deadline on every read allocates nothing
		return
	}
	d.timer = time.AfterFunc(dur, func() {
		c.mu.Lock()
		s.cond.Broadcast()
		c.mu.Unlock()
	})
}
