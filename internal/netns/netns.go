// Package netns runs code inside another network namespace. It is the only package in Ambit
// that calls setns: every switch locks the OS thread, and a thread whose original namespace
// cannot be restored is thrown away instead of being returned to the Go scheduler.
//
// A socket keeps the network namespace it was created in, so a listener or connection made
// inside Do can be used from any goroutine afterwards.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Handle is an open network namespace.
type Handle struct {
	f *os.File
}

// Open opens the network namespace at path (for example /proc/PID/ns/net).
func Open(path string) (*Handle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace: %w", err)
	}
	return &Handle{f: f}, nil
}

// FromFd wraps an already open namespace file descriptor (for example one received over a
// Unix socket). The Handle owns fd from then on.
func FromFd(fd int, name string) *Handle {
	return &Handle{f: os.NewFile(uintptr(fd), name)}
}

// Fd returns the namespace's file descriptor; it stays valid until Close.
func (h *Handle) Fd() int { return int(h.f.Fd()) }

// Path returns a path that refers to the namespace while the Handle is open, usable by
// other processes (nsenter --net=PATH).
func (h *Handle) Path() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), h.f.Fd()) }

// Close releases the Handle.
func (h *Handle) Close() error { return h.f.Close() }

// Do runs fn on an OS thread that is inside the namespace, then moves the thread back. fn must
// not start goroutines that expect to inherit the namespace: only the calling thread is moved.
func (h *Handle) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine keeps the caller's own thread out of the switch: if restoring fails,
	// this goroutine exits still locked and the runtime destroys its thread.
	go func() {
		orig, err := enter(h.Fd())
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- fmt.Errorf("restoring network namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// enter locks the calling goroutine to its thread and moves the thread into the namespace nsfd,
// returning the thread's own namespace to move back to. On failure the thread is unlocked
// again, still where it was.
func enter(nsfd int) (*os.File, error) {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("opening current network namespace: %w", err)
	}
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("entering network namespace: %w", err)
	}
	return orig, nil
}

// DialContext dials addr with a socket created inside the namespace.
func (h *Handle) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// Listen opens a listener inside the namespace.
func (h *Handle) Listen(ctx context.Context, lc *net.ListenConfig, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		l, err := lc.Listen(ctx, network, addr)
		ln = l
		return err
	})
	return ln, err
}
