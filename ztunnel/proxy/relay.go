package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
)

// closeWriter is a connection that can half-close: *net.TCPConn and HBONE streams.
type closeWriter interface {
	CloseWrite() error
}

// bufPool holds the copy buffers. 64 KiB matches the largest TLS record batches HBONE writes;
// TCP-to-TCP copies do not use it (io.Copy splices them in the kernel).
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// relay copies both ways between the app side a and the far side b until both directions end,
// half-closing each side when the other finishes sending. It returns the bytes copied each way
// and the first error that was not a plain close.
func relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errB error
	wg.Add(1)
	go func() {
		defer wg.Done()
		bToA, errB = pipe(a, b)
	}()
	aToB, err = pipe(b, a)
	wg.Wait()
	a.Close()
	b.Close()
	if err == nil {
		err = errB
	}
	return aToB, bToA, err
}

// pipe copies src to dst, then half-closes dst. On an error it closes both, which also ends the
// copy in the other direction.
func pipe(dst, src net.Conn) (int64, error) {
	var n int64
	var err error
	_, dstTCP := dst.(*net.TCPConn)
	_, srcTCP := src.(*net.TCPConn)
	if dstTCP && srcTCP {
		n, err = io.Copy(dst, src)
	} else {
		bp := bufPool.Get().(*[]byte)
		n, err = io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bp)
		bufPool.Put(bp)
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

// onlyWriter and onlyReader hide ReadFrom/WriteTo so that CopyBuffer uses the pooled buffer
// instead of allocating one for types that implement them partially.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }
