package grpcwire

import (
	"context"
	"fmt"
	"io"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// h2stream is one HTTP/2 stream of a transport: the request goes out with write, the response
// comes in with awaitHeaders, read and trailers.
type h2stream struct {
	t  *transport
	id uint32

	// Guarded by t.mu.
	sendWin     int64
	recvWin     int64 // what the server may still send on the stream
	recvUnacked int64 // read by the caller, not yet returned with WINDOW_UPDATE
	buf         []byte
	off         int // buf[off:] is received and not yet read
	gotHeader   bool
	status      int
	header      map[string]string
	trailer     map[string]string
	recvEnd     bool  // END_STREAM received
	sendEnd     bool  // END_STREAM sent
	err         error // why the stream failed or was ended by either side

	recvCh chan struct{} // poked when what read or awaitHeaders wait for may have come
	sendCh chan struct{} // poked when the send windows grew or the stream failed
}

// poke wakes the goroutine waiting on ch, if any, without blocking.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// failLocked ends the stream with err, unless it has ended already.
func (s *h2stream) failLocked(err error) {
	if s.err == nil {
		s.err = err
	}
	poke(s.recvCh)
	poke(s.sendCh)
}

// endRecvLocked records the server's END_STREAM.
func (s *h2stream) endRecvLocked() {
	s.recvEnd = true
	if s.sendEnd {
		s.t.removeLocked(s)
	}
}

// creditLocked returns n bytes the caller has read to the stream's window, in batches.
func (s *h2stream) creditLocked(n int64) {
	if s.recvEnd || s.t.streams[s.id] != s {
		return
	}
	s.recvUnacked += n
	if s.recvUnacked >= streamWindow/4 {
		s.t.queueLocked(ctlFrame{typ: h2.FrameWindowUpdate, sid: s.id, payload: u32(uint32(s.recvUnacked))})
		s.recvWin += s.recvUnacked
		s.recvUnacked = 0
	}
}

// write sends p as DATA within the flow-control windows, ending the request with END_STREAM if
// end. It returns errServerDone once the server has ended the stream.
func (s *h2stream) write(ctx context.Context, p []byte, end bool) error {
	t := s.t
	if len(p) == 0 && !end {
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		t.wmu.Lock()
		t.mu.Lock()
		var err error
		switch {
		case s.err != nil:
			err = s.err
		case s.recvEnd:
			err = errServerDone
		case s.sendEnd:
			err = errAborted
		}
		if err != nil {
			t.mu.Unlock()
			t.wmu.Unlock()
			return err
		}
		n := int64(len(p))
		n = min(n, s.sendWin, t.sendWin, int64(t.peerMaxFrame))
		if len(p) > 0 && n <= 0 {
			t.mu.Unlock()
			t.wmu.Unlock()
			select {
			case <-s.sendCh:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		s.sendWin -= n
		t.sendWin -= n
		last := end && n == int64(len(p))
		var flags uint8
		if last {
			flags = h2.FlagEndStream
			s.sendEnd = true
			if s.recvEnd {
				t.removeLocked(s)
			}
		}
		t.mu.Unlock()
		err = writeFrame(t.bw, h2.FrameData, flags, s.id, p[:n])
		if err == nil {
			err = t.bw.Flush()
		}
		t.wmu.Unlock()
		if err != nil {
			err = fmt.Errorf("writing to the server: %w", err)
			t.closeWith(err)
			return err
		}
		p = p[n:]
		if len(p) == 0 && (!end || last) {
			return nil
		}
	}
}

// awaitHeaders waits for the response headers.
func (s *h2stream) awaitHeaders(ctx context.Context) (int, map[string]string, error) {
	t := s.t
	for {
		t.mu.Lock()
		status, header, got, err := s.status, s.header, s.gotHeader, s.err
		t.mu.Unlock()
		if got {
			return status, header, nil
		}
		if err != nil {
			return 0, nil, err
		}
		select {
		case <-s.recvCh:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// read reads response body bytes into p: io.EOF after the server's END_STREAM, the stream's
// error if it failed first.
func (s *h2stream) read(ctx context.Context, p []byte) (int, error) {
	t := s.t
	for {
		t.mu.Lock()
		if s.off < len(s.buf) {
			n := copy(p, s.buf[s.off:])
			s.off += n
			if s.off == len(s.buf) {
				// An idle stream (an xDS stream between pushes) keeps no big buffer.
				if cap(s.buf) > 64<<10 {
					s.buf = nil
				} else {
					s.buf = s.buf[:0]
				}
				s.off = 0
			}
			s.creditLocked(int64(n))
			t.mu.Unlock()
			return n, nil
		}
		end, err := s.recvEnd, s.err
		t.mu.Unlock()
		if end {
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		select {
		case <-s.recvCh:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// trailers returns the trailers, once read has returned io.EOF.
func (s *h2stream) trailers() map[string]string {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	return s.trailer
}

// abort ends the stream for the caller: RST_STREAM unless both sides had ended it.
func (s *h2stream) abort() {
	t := s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	s.failLocked(errAborted)
	if t.streams[s.id] != s {
		return
	}
	code := h2.ErrCodeCancel
	if s.recvEnd {
		code = h2.ErrCodeNo // the response is complete; the request need not be
	}
	t.queueLocked(ctlFrame{typ: h2.FrameRSTStream, sid: s.id, payload: u32(uint32(code))})
	t.removeLocked(s)
}

// reader reads a stream's response body as an io.Reader, within ctx.
type reader struct {
	s   *h2stream
	ctx context.Context
}

func (r reader) Read(p []byte) (int, error) { return r.s.read(r.ctx, p) }
