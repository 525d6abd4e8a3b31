package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrDialerClosed is returned by a Dialer after Close.
var ErrDialerClosed = errors.New("network namespace dialer closed")

// Dialer opens connections from inside a network namespace without switching the caller's
// thread. One OS thread enters the namespace once and stays there; it only creates sockets,
// which keep that namespace for life. Socket options, bind, connect and all I/O then run on
// the caller's goroutine with Go's netpoller, like any other connection. A dial costs a hand
// over to that thread instead of two namespace switches.
//
// The thread is released with Close: the Dialer's owner must call it.
type Dialer struct {
	reqs chan *socketReq
	// ready holds TCP sockets made ahead of time, per family (IPv4, IPv6), so that most dials
	// need no hand over at all; refill asks the thread to top them up, for the families in
	// wanted (set on a family's first dial).
	ready  [2]chan int
	wanted [2]atomic.Bool
	refill chan struct{}
	// done closes on Close; exited closes when the thread's goroutine has returned.
	done, exited chan struct{}
	stop         sync.Once
}

// DialOptions says how a Dialer prepares one connection.
type DialOptions struct {
	// Control, if not nil, is called on the new socket before it is bound and connected, as
	// net.Dialer's Control is.
	Control func(network, address string, c syscall.RawConn) error
	// LocalAddr, if valid, is the address the socket is bound to (any port) before connecting.
	LocalAddr netip.Addr
	// KeepAlive is applied to TCP connections when its Enable is set (zero fields take Go's
	// defaults, as in net.TCPConn.SetKeepAliveConfig).
	KeepAlive net.KeepAliveConfig
}

type socketReq struct {
	family, sotype int
	reply          chan socketResult
}

type socketResult struct {
	fd  int
	err error
}

var replyPool = sync.Pool{New: func() any { return make(chan socketResult, 1) }}

// NewDialer starts a Dialer whose sockets are created inside the namespace. It does not take
// ownership of h; h may be closed while the Dialer runs (its thread holds the namespace).
func (h *Handle) NewDialer() (*Dialer, error) {
	d := &Dialer{reqs: make(chan *socketReq), refill: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	for i := range d.ready {
		d.ready[i] = make(chan int, readySockets)
	}
	started := make(chan error, 1)
	go d.run(h.Fd(), started)
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

// run is the thread in the namespace. Its goroutine stays locked to the thread while it runs.
// On Close it moves the thread back before unlocking it; if that fails the goroutine returns
// still locked, and the runtime destroys the thread instead of reusing it. (Returning locked
// is not the normal way out: on the process's main thread the runtime would park the thread
// for good, inside the pod's namespace.) A locked thread does not pass its namespace on: the
// runtime starts new threads from a clean template thread when asked from a locked one.
func (d *Dialer) run(nsfd int, started chan<- error) {
	defer close(d.exited)
	orig, err := enter(nsfd)
	if err != nil {
		started <- err
		return
	}
	defer orig.Close()
	started <- nil
	for {
		select {
		case r := <-d.reqs:
			fd, err := newSocket(r.family, r.sotype)
			r.reply <- socketResult{fd, err}
		case <-d.refill:
			d.fill()
		case <-d.done:
			for _, ch := range d.ready {
				d.drain(ch)
			}
			if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			return
		}
	}
}

// Close stops the Dialer and waits until its thread has left the namespace. Dials after Close
// fail with ErrDialerClosed; connections already made are not affected.
func (d *Dialer) Close() error {
	d.stop.Do(func() { close(d.done) })
	<-d.exited
	return nil
}

// readySockets is how many TCP sockets per family a Dialer keeps made; it tops them up once
// half are taken, so the thread wakes once per readySockets/2 dials.
const readySockets = 8

var families = [2]int{unix.AF_INET, unix.AF_INET6}

func newSocket(family, sotype int) (int, error) {
	return unix.Socket(family, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
}

// fill tops up the ready sockets of the families dialled so far. A failure (out of
// descriptors) leaves the pool short; dials then ask the thread directly and see the error.
func (d *Dialer) fill() {
	for i, ch := range d.ready {
		if !d.wanted[i].Load() {
			continue
		}
		for len(ch) < cap(ch) {
			fd, err := newSocket(families[i], unix.SOCK_STREAM)
			if err != nil {
				return
			}
			select {
			case ch <- fd:
			default:
				unix.Close(fd)
			}
		}
	}
}

// drain closes the sockets left in ch.
func (d *Dialer) drain(ch chan int) {
	for {
		select {
		case fd := <-ch:
			unix.Close(fd)
		default:
			return
		}
	}
}

// socket returns a new non-blocking socket made inside the namespace: a ready one if there is
// one, else one the thread makes now.
func (d *Dialer) socket(ctx context.Context, family, sotype int) (int, error) {
	select {
	case <-d.done:
		return -1, ErrDialerClosed
	default:
	}
	if sotype == unix.SOCK_STREAM {
		i := 0
		if family == unix.AF_INET6 {
			i = 1
		}
		ch := d.ready[i]
		select {
		case fd := <-ch:
			if len(ch) <= cap(ch)/2 {
				d.nudge()
			}
			return fd, nil
		default:
			if !d.wanted[i].Load() {
				d.wanted[i].Store(true)
			}
			d.nudge()
		}
	}
	r := &socketReq{family: family, sotype: sotype, reply: replyPool.Get().(chan socketResult)}
	select {
	case d.reqs <- r:
	case <-d.done:
		return -1, ErrDialerClosed
	case <-ctx.Done():
		return -1, ctx.Err()
	}
	// Once the thread took the request it answers at once.
	res := <-r.reply
	replyPool.Put(r.reply)
	if res.err != nil {
		return -1, os.NewSyscallError("socket", res.err)
	}
	return res.fd, nil
}

// nudge asks the thread to top up the ready sockets, unless it has been asked already.
func (d *Dialer) nudge() {
	select {
	case d.refill <- struct{}{}:
	default:
	}
}

// DialContext connects to address, an IP literal with a port ("10.0.0.1:80", "[fd00::1]:53"),
// over network "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6", with a socket made inside the
// namespace. The connection is a *net.TCPConn or *net.UDPConn.
func (d *Dialer) DialContext(ctx context.Context, network, address string, o DialOptions) (net.Conn, error) {
	c, err := d.dial(ctx, network, address, o)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: addrOf(network, address), Err: err}
	}
	return c, nil
}

func (d *Dialer) dial(ctx context.Context, network, address string, o DialOptions) (net.Conn, error) {
	raddr, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("address %q is not an IP address with a port: %w", address, err)
	}
	raddr = netip.AddrPortFrom(raddr.Addr().Unmap(), raddr.Port())
	var sotype int
	switch network {
	case "tcp", "tcp4", "tcp6":
		sotype = unix.SOCK_STREAM
	case "udp", "udp4", "udp6":
		sotype = unix.SOCK_DGRAM
	default:
		return nil, fmt.Errorf("network %q: want tcp, tcp4, tcp6, udp, udp4 or udp6", network)
	}
	family := unix.AF_INET
	if raddr.Addr().Is6() {
		family = unix.AF_INET6
	}
	if last := network[len(network)-1]; (last == '4' && family != unix.AF_INET) || (last == '6' && family != unix.AF_INET6) {
		return nil, fmt.Errorf("address %s is not of network %s", raddr.Addr(), network)
	}
	if o.LocalAddr.IsValid() && o.LocalAddr.Unmap().Is4() != (family == unix.AF_INET) {
		return nil, fmt.Errorf("local address %s and remote address %s are of different families", o.LocalAddr, raddr.Addr())
	}
	fd, err := d.socket(ctx, family, sotype)
	if err != nil {
		return nil, err
	}
	// A non-blocking descriptor makes a pollable File, so the connect below waits in the
	// netpoller. net.FileConn then makes the connection from a duplicate of it.
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	if o.Control != nil {
		if err := o.Control(network, address, rc); err != nil {
			return nil, err
		}
	}
	if o.LocalAddr.IsValid() {
		if err := control(rc, func(fd int) error { return unix.Bind(fd, sockaddr(netip.AddrPortFrom(o.LocalAddr.Unmap(), 0))) }); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
	}
	if err := connect(ctx, f, rc, sockaddr(raddr)); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok && o.KeepAlive.Enable {
		if err := tc.SetKeepAliveConfig(o.KeepAlive); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// aLongTimeAgo is a deadline in the past: setting it wakes a goroutine waiting on the file.
var aLongTimeAgo = time.Unix(1, 0)

// connect connects the non-blocking socket of f, waiting in the netpoller until the handshake
// ends or ctx does.
func connect(ctx context.Context, f *os.File, rc syscall.RawConn, sa unix.Sockaddr) error {
	err := control(rc, func(fd int) error { return unix.Connect(fd, sa) })
	switch {
	case err == nil, errors.Is(err, unix.EISCONN):
		return nil
	case errors.Is(err, unix.EINPROGRESS), errors.Is(err, unix.EALREADY), errors.Is(err, unix.EINTR):
	default:
		return os.NewSyscallError("connect", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(aLongTimeAgo) })
	defer stop()
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt", err)
			return true
		}
		switch e := syscall.Errno(soErr); e {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0, unix.EISCONN:
			// The poller can wake spuriously: only a peer address means connected.
			if _, err := unix.Getpeername(int(fd)); err == nil {
				return true
			}
			return false
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			// The file's deadline is the context's, which may fire a moment later.
			return context.DeadlineExceeded
		}
		return werr
	}
	return connErr
}

// control runs fn on rc's descriptor and returns fn's error.
func control(rc syscall.RawConn, fn func(fd int) error) error {
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// addrOf names the remote address for an error, as the net package does.
func addrOf(network, address string) net.Addr {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil
	}
	if network[0] == 'u' {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}
