// Package tcpio reads and writes TCP sockets for a proxy's data path with less work per call
// than net.TCPConn.
//
// A net.TCPConn wraps every read and write in the scheduler's system-call bookkeeping
// (entersyscall/exitsyscall), which exists so that a blocking call can hand its P to another
// thread. The data path's sockets are non-blocking, so that never helps them, and it costs:
// with the process idle between requests, the runtime's monitor thread sleeps, and the first
// system call of every burst wakes it with a futex (10% of ztunnel's CPU at full load in the
// datapath bench), after which it polls every 20 µs until the process is idle again. Conn makes
// the same calls through syscall.RawConn with raw system calls, so the monitor stays asleep;
// it keeps net.TCPConn's semantics otherwise (deadlines, Close unblocking a waiting call,
// errors as *net.OpError).
package tcpio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn is a TCP connection whose Read and Write make raw system calls. Its other methods are
// the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex // rmu serializes reads and guards the read fields below
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex // wmu serializes writes and guards the write fields below
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	all     bool // Write: wait until all of wbuf is written; WriteSome: return at EAGAIN
	writeFn func(uintptr) bool
}

// New wraps c. c must not be used directly while the Conn is in use, except for Close,
// deadlines, addresses and socket options.
func New(c *net.TCPConn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	t := &Conn{TCPConn: c, rc: rc}
	t.readFn = t.read
	t.writeFn = t.write
	return t, nil
}

// Read reads up to len(p) bytes, waiting until some are available; it returns io.EOF once
// the peer has closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn callback of Read: false asks to wait for the socket to be readable.
func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(c.rbuf))), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerrno = errno
			return true
		}
	}
}

// Write writes all of p, waiting while the socket's send buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	return c.writeAll(p, true)
}

// WriteSome writes as much of p as the socket takes without waiting, possibly nothing.
func (c *Conn) WriteSome(p []byte) (int, error) {
	return c.writeAll(p, false)
}

func (c *Conn) writeAll(p []byte, all bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werrno, c.all = p, 0, 0, all
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werrno
	c.wbuf = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write is the RawConn callback of Write and WriteSome: false asks to wait for the socket to
// be writable.
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		switch errno {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !c.all
		default:
			c.werrno = errno
			return true
		}
	}
	return true
}

func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		// RawConn names its operations raw-read and raw-write.
		e := *oe
		e.Op = op
		return &e
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
