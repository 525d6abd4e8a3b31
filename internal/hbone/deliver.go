package hbone

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/ambit-mesh/ambit/internal/tcpio"
)

// Direct delivery: a stream being copied into a TCP socket (CopyTo) lets the read loop write
// each DATA payload into that socket itself, from the connection's read buffer, as long as the
// socket takes it without blocking. A request then costs no hand-off to the copying goroutine
// and no copy into the stream's buffer. What the socket does not take at once is buffered as
// usual and written by CopyTo, which blocks on the socket instead of the read loop; until
// that buffer is empty the read loop buffers too, so bytes leave in order.

// copyBufSize is CopyTo's buffer for what the read loop could not deliver.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// WriteTo copies the stream into w until the peer ends it (io.WriterTo); see CopyTo.
func (s *Stream) WriteTo(w io.Writer) (int64, error) { return s.CopyTo(w, nil) }

// CopyTo copies the stream's data into dst until the peer half-closes the stream (it then
// returns a nil error) or the stream or dst fails, and calls count (if not nil) with every
// amount written. When dst is a *net.TCPConn or a *tcpio.Conn the connection's read loop
// writes into it directly whenever the socket takes the data at once. At most one CopyTo or Read may run
// on a stream at a time.
func (s *Stream) CopyTo(dst io.Writer, count func(int64)) (total int64, err error) {
	c := s.c
	sink, _ := dst.(*tcpio.Conn)
	if tc, ok := dst.(*net.TCPConn); ok {
		if tcp, err := tcpio.New(tc); err == nil {
			sink, dst = tcp, tcp
		}
	}
	// The buffer is taken only while there is buffered data to write: a stream whose data
	// the read loop delivers holds none.
	var bp *[]byte
	defer func() {
		if bp != nil {
			copyBufs.Put(bp)
		}
	}()
	c.mu.Lock()
	s.sink, s.sinkCount = sink, count
	defer func() {
		// The read loop may be writing to dst: it must be done before dst is handed back.
		for s.sinkBusy {
			s.cond.Wait()
		}
		s.sink, s.sinkCount = nil, nil
		total += s.sinkN
		c.mu.Unlock()
	}()
	for {
		if s.sinkErr != nil {
			return total, s.sinkErr
		}
		if s.rb.n > 0 && !s.sinkBusy {
			if bp == nil {
				bp = copyBufs.Get().(*[]byte)
			}
			n := s.rb.read(*bp)
			s.sinkBusy = true
			c.mu.Unlock()
			w, err := dst.Write((*bp)[:n])
			if count != nil && w > 0 {
				count(int64(w))
			}
			total += int64(w)
			c.mu.Lock()
			s.sinkBusy = false
			s.creditLocked(int64(n))
			if err != nil {
				return total, err
			}
			if s.rb.n == 0 {
				copyBufs.Put(bp)
				bp = nil
			}
			continue
		}
		if !s.sinkBusy {
			switch {
			case s.recvEnd:
				return total, nil
			case s.closed:
				return total, net.ErrClosed
			case s.resetErr != nil:
				return total, s.resetErr
			case c.err != nil:
				return total, fmt.Errorf("%w: %w", ErrConnClosed, c.err)
			case s.rdl.expired():
				return total, os.ErrDeadlineExceeded
			}
		}
		s.cond.Wait()
	}
}

// deliverLocked is readData's direct path: it writes the payload bytes of one DATA frame
// (after the header and pad length) from the read buffer into the stream's sink, buffering
// what the sink does not take at once, then skips the padding. It is called with c.mu held
// and s.sinkBusy just set, and returns with c.mu released.
func (c *conn) deliverLocked(s *Stream, payload, pad, length uint32, end bool) error {
	sink, count := s.sink, s.sinkCount
	c.mu.Unlock()
	var written, dropped int
	var werr, rerr error
	blocked := false
	for rem := int(payload); rem > 0; {
		// Write what the read buffer holds. Once it is empty, one read fills it: the record
		// layer decrypts every whole record it has read into it, up to 64 KiB. Waiting for a
		// full buffer instead made bufio move the start of the next frame to its front on
		// almost every fill.
		if c.br.Buffered() == 0 {
			if _, rerr = c.br.Peek(1); rerr != nil {
				break
			}
		}
		k := min(rem, c.br.Buffered())
		b, _ := c.br.Peek(k)
		if !blocked && werr == nil {
			n, err := sink.WriteSome(b)
			written += n
			b = b[n:]
			if err != nil {
				werr = err
			} else if len(b) > 0 {
				blocked = true
			}
		}
		if len(b) > 0 {
			if werr != nil {
				dropped += len(b)
			} else {
				c.mu.Lock()
				copy(s.rb.reserve(len(b)), b)
				if !s.rb.commit(len(b)) {
					c.creditConnLocked(int64(len(b)))
				}
				c.mu.Unlock()
			}
		}
		c.br.Discard(k)
		rem -= k
	}
	if rerr == nil && pad > 0 {
		_, rerr = c.br.Discard(int(pad))
	}

	c.mu.Lock()
	s.sinkBusy = false
	s.sinkN += int64(written)
	s.creditLocked(int64(written))
	c.creditConnLocked(int64(dropped))
	if extra := int64(length - payload); extra > 0 {
		s.creditLocked(extra)
	}
	if werr != nil {
		s.sinkErr = werr
		s.sink, s.sinkCount = nil, nil
	}
	if end && rerr == nil {
		s.recvEnd = true
		s.maybeDoneLocked()
	}
	// Wake CopyTo only when it has something to do: nothing when the sink took it all.
	if s.rb.n > 0 || end || werr != nil || !s.readable() || c.err != nil || s.rdl.expired() {
		s.cond.Broadcast()
	}
	c.mu.Unlock()
	if count != nil && written > 0 {
		count(int64(written))
	}
	return rerr
}
