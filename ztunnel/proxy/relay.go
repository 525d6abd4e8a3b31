package proxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/ambit-mesh/ambit/internal/gopool"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/tcpio"
)

// closeWriter is a connection that can half-close: *net.TCPConn and HBONE streams.
type closeWriter interface {
	CloseWrite() error
}

// Copy buffers: a copy waits for data in a small buffer of its own and moves to a pooled
// large one only while reads keep filling what it has, so an idle connection holds 16 KiB per
// direction, not 64. 64 KiB matches the largest TLS record batches HBONE writes. TCP-to-TCP
// copies use neither (io.Copy splices them in the kernel), nor do HBONE streams into TCP
// (hbone.Stream.CopyTo).
const (
	smallBuf = 16 << 10
	largeBuf = 64 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

// copyAdaptive copies src to dst like io.Copy, reporting every write to count.
func copyAdaptive(dst io.Writer, src io.Reader, count func(int64)) (int64, error) {
	sp := smallBufs.Get().(*[]byte)
	small := *sp
	buf := small
	var large *[]byte
	defer func() {
		smallBufs.Put(sp)
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			count(int64(w))
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		switch {
		case n == len(buf) && large == nil:
			large = largeBufs.Get().(*[]byte)
			buf = *large
		case n < smallBuf && large != nil:
			largeBufs.Put(large)
			large, buf = nil, small
		}
	}
}

// relay copies both ways between the client side a and the server side b until both
// directions end, half-closing each side when the other finishes sending. It counts the bytes
// into rec as they flow (a to b as request, b to a as response) and returns the totals and
// the first error that was not a plain close.
func relay(workers *gopool.Pool, a, b net.Conn, rec ConnRecord) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errB error
	wg.Add(1)
	workers.Go(func() {
		defer wg.Done()
		bToA, errB = pipe(a, b, rec.AddResponse)
	})
	aToB, err = pipe(b, a, rec.AddRequest)
	wg.Wait()
	a.Close()
	b.Close()
	if err == nil {
		err = errB
	}
	return aToB, bToA, err
}

// spliceChunk is how much a TCP-to-TCP copy moves in the kernel between two counts.
const spliceChunk = 1 << 20

// pipe copies src to dst, reporting progress to count, then half-closes dst. On an error it
// closes both, which also ends the copy in the other direction.
func pipe(dst, src net.Conn, count func(int64)) (int64, error) {
	var n int64
	var err error
	_, dstTCP := dst.(*net.TCPConn)
	_, srcTCP := src.(*net.TCPConn)
	if dstTCP && srcTCP {
		// io.CopyN keeps the splice (the kernel moves a *io.LimitedReader of a TCPConn too)
		// and gives a count every spliceChunk.
		for {
			var k int64
			k, err = io.CopyN(dst, src, spliceChunk)
			n += k
			count(k)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				break
			}
		}
	} else if st, ok := src.(*hbone.Stream); ok {
		// The HBONE read loop writes into dst itself while dst keeps up.
		n, err = st.CopyTo(dst, count)
	} else {
		if srcTCP {
			// The read side of a TCP-to-HBONE copy is its hot path: tcpio's reads skip the
			// scheduler's system-call bookkeeping.
			if t, terr := tcpio.New(src.(*net.TCPConn)); terr == nil {
				src = t
			}
		}
		n, err = copyAdaptive(dst, src, count)
	}
	if err != nil {
		dst.Close()
		src.Close()
		if isClosed(err) {
			err = nil
		}
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if cw.CloseWrite() != nil {
			dst.Close()
		}
	} else {
		dst.Close()
	}
	return n, nil
}

// isClosed reports errors that only say the connection ended.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}
