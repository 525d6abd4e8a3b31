package hbone

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// copyThrough sends size pattern bytes through an echoing stream and CopyTo's them into a
// TCP socket whose other end read drains; it returns what CopyTo and count reported, the
// bytes the read loop wrote itself, and read's result.
func copyThrough(t *testing.T, e *env, size int64, read func(*net.TCPConn) (int64, []byte, error)) (n, counted, direct int64, got int64, sum []byte, err error) {
	t.Helper()
	s := e.dial(t, 80)
	w, r := testutil.TCPPair(t)
	return copyStream(s, w, r, size, read)
}

// copyStream is copyThrough on a dialed stream s and a socket pair w -> r; it calls no
// t.Fatal, so it may run in any goroutine.
func copyStream(s *Stream, w, r *net.TCPConn, size int64, read func(*net.TCPConn) (int64, []byte, error)) (n, counted, direct int64, got int64, sum []byte, err error) {
	defer s.Close()
	go func() {
		if _, err := io.Copy(s, newPattern(size)); err == nil {
			s.CloseWrite()
		}
	}()
	type result struct {
		got int64
		sum []byte
		err error
	}
	rc := make(chan result, 1)
	go func() {
		g, h, err := read(r)
		rc <- result{g, h, err}
	}()
	var cnt atomic.Int64
	n, err = s.CopyTo(w, func(k int64) { cnt.Add(k) })
	if err == nil {
		w.CloseWrite()
	} else {
		w.Close()
	}
	res := <-rc
	s.c.mu.Lock()
	direct = s.sinkN
	s.c.mu.Unlock()
	if res.err != nil && err == nil {
		err = res.err
	}
	return n, cnt.Load(), direct, res.got, res.sum, err
}

// checkCopied says what is wrong with a copy of size pattern bytes, from CopyTo's result n,
// count's total counted, and the socket reader's byte count got and sha256 sum.
func checkCopied(size, n, counted, got int64, sum []byte) error {
	if n != size || counted != size || got != size {
		return fmt.Errorf("CopyTo returned %d, count saw %d, the socket's reader got %d; want %d each", n, counted, got, size)
	}
	if want := newPattern(size).sum(); !bytes.Equal(sum, want) {
		return fmt.Errorf("content differs: sha256 %x, want %x", sum, want)
	}
	return nil
}

func hashAll(r *net.TCPConn) (int64, []byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return n, h.Sum(nil), err
}

// A reader that keeps up gets the tunnelled bytes from the read loop itself, whole and in
// order; count adds up to what was sent.
func TestCopyToTCPDirect(t *testing.T) {
	e := newEnv(t, echo)
	const size = 64 << 20
	n, counted, direct, got, sum, err := copyThrough(t, e, size, hashAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCopied(size, n, counted, got, sum); err != nil {
		t.Fatal(err)
	}
	if direct == 0 {
		t.Fatalf("the read loop delivered nothing itself; want direct writes into the socket")
	}
	t.Logf("%d of %d bytes written by the read loop", direct, size)
}

// A reader that stalls makes the socket refuse data: the rest is buffered and written by
// CopyTo, still whole and in order.
func TestCopyToTCPSlowReader(t *testing.T) {
	e := newEnv(t, echo)
	const size = 32 << 20
	slow := func(r *net.TCPConn) (int64, []byte, error) {
		// The socket's buffers (a few MiB at most) fill, and the sink blocks. (A shrunk
		// SO_RCVBUF would stall loopback TCP, whose segments are larger than it.)
		if err := waitFull(r); err != nil {
			return 0, nil, err
		}
		h := sha256.New()
		buf := make([]byte, 1500)
		var n int64
		for {
			k, err := r.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			if errors.Is(err, io.EOF) {
				return n, h.Sum(nil), nil
			}
			if err != nil {
				return n, nil, err
			}
		}
	}
	n, counted, direct, got, sum, err := copyThrough(t, e, size, slow)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCopied(size, n, counted, got, sum); err != nil {
		t.Fatal(err)
	}
	if direct == size {
		t.Fatalf("every byte went directly; the stalled reader should have made CopyTo buffer some")
	}
	t.Logf("%d of %d bytes written by the read loop", direct, size)
}

// waitFull returns once r's receive queue has stopped growing while nobody reads it: the
// sockets between the stream's sink and r are full, so the sink refuses writes. A fixed stall
// is not enough under -race on a busy machine, where the bytes may arrive slower than a
// reader drains them afterwards.
func waitFull(r *net.TCPConn) error {
	rc, err := r.SyscallConn()
	if err != nil {
		return err
	}
	queued := func() (n int) {
		rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	last, since := -1, time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		n := queued()
		if err != nil {
			return fmt.Errorf("reading the receive queue: %w", err)
		}
		if n != last {
			last, since = n, time.Now()
		} else if n > 0 && time.Since(since) >= 200*time.Millisecond {
			return nil
		}
	}
	return fmt.Errorf("the receive queue never filled (%d bytes queued)", last)
}

// A socket that fails under the read loop ends CopyTo with the error, and the connection's
// window stays whole: the next stream on it moves more than the connection window.
func TestCopyToTCPFailedSink(t *testing.T) {
	e := newEnv(t, echo)
	reset := func(r *net.TCPConn) (int64, []byte, error) {
		buf := make([]byte, 64<<10)
		n, err := io.ReadAtLeast(r, buf, 1<<20)
		r.SetLinger(0)
		r.Close() // RST: the next writes into the other end fail
		return int64(n), nil, err
	}
	_, _, _, _, _, err := copyThrough(t, e, 256<<20, reset)
	if err == nil {
		t.Fatal("CopyTo into a reset socket: got no error")
	}
	t.Logf("CopyTo: %v", err)

	size := int64(3 * connWindow)
	n, counted, _, got, sum, err := copyThrough(t, e, size, hashAll)
	if err == nil {
		err = checkCopied(size, n, counted, got, sum)
	}
	if err != nil {
		t.Fatalf("next stream: %v", err)
	}
	if c := e.pool.numConns(); c != 1 {
		t.Fatalf("connections: %d; want the same one reused", c)
	}
}

// Many streams of one connection copied into their own sockets at once, half of them read
// in fits and starts: each socket gets its stream's bytes, whole and in order, and a stalled
// reader does not hold up the others.
func TestCopyToTCPConcurrent(t *testing.T) {
	e := newEnv(t, echo)
	const streams = 32
	const size = 4 << 20
	errs := make(chan error, streams)
	for i := range streams {
		s := e.dial(t, 80)
		w, r := testutil.TCPPair(t)
		go func() {
			read := hashAll
			if i%2 == 1 {
				read = func(r *net.TCPConn) (int64, []byte, error) {
					h := sha256.New()
					buf := make([]byte, 8<<10)
					var n int64
					for k := 0; ; k++ {
						if k%64 == 0 {
							time.Sleep(time.Duration(i) * time.Millisecond)
						}
						m, err := r.Read(buf)
						h.Write(buf[:m])
						n += int64(m)
						if errors.Is(err, io.EOF) {
							return n, h.Sum(nil), nil
						}
						if err != nil {
							return n, nil, err
						}
					}
				}
			}
			n, counted, _, got, sum, err := copyStream(s, w, r, size, read)
			if err == nil {
				err = checkCopied(size, n, counted, got, sum)
			}
			if err != nil {
				err = fmt.Errorf("stream %d: %w", i, err)
			}
			errs <- err
		}()
	}
	for range streams {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if c := e.pool.numConns(); c != 1 {
		t.Errorf("connections: %d; want the streams to share one", c)
	}
}
