package httpserve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Handler answers one request by writing w. It runs on the connection's goroutine; the
// connection's next request waits for it.
type Handler func(w *Response, r *Request)

// Config configures a [Server]. Every field has a default.
type Config struct {
	// ReadHeaderTimeout bounds the wait for a request's line and header fields: from the
	// accept for the first request of a connection, from the first byte for the next ones.
	// Default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadBodyTimeout bounds the wait for a request body, from the end of the header fields.
	// Default 30 s.
	ReadBodyTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no next request for this long.
	// Default 60 s.
	IdleTimeout time.Duration
	// WriteTimeout closes a connection when one write of its response makes no progress for
	// this long (a client that stopped reading). Default 30 s.
	WriteTimeout time.Duration
	// MaxHeaderBytes caps a request line and its header fields together. Default 8 KiB.
	MaxHeaderBytes int
	// MaxBodyBytes caps a request's Content-Length. Default 1 MiB.
	MaxBodyBytes int64
	// BaseContext is the parent of every request's context. Default context.Background().
	BaseContext context.Context
	// Log receives the requests the server refused and the handlers that panicked; nil
	// discards them.
	Log *slog.Logger
}

// Server serves HTTP/1.1 on the listeners given to [Server.Serve]. Create it with [New].
type Server struct {
	handler Handler
	cfg     Config
	log     *slog.Logger

	// mu guards the fields below.
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]*connState
	shutdown  bool
	quit      chan struct{}  // closed by the first Shutdown or Close
	drained   chan struct{}  // closed when Shutdown waits and the last connection ends
	wg        sync.WaitGroup // connection goroutines
}

// connState is what Shutdown and Close need of a connection, guarded by Server.mu.
type connState struct {
	idle   bool               // waiting for a request, none in progress
	cancel context.CancelFunc // ends the current request's context; nil between requests
}

// ErrServerClosed is returned by [Server.Serve] after [Server.Shutdown] or [Server.Close].
var ErrServerClosed = errors.New("httpserve: server closed")

// New returns a server that answers every request with h.
func New(h Handler, cfg Config) *Server {
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.ReadBodyTimeout <= 0 {
		cfg.ReadBodyTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 8 << 10
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.BaseContext == nil {
		cfg.BaseContext = context.Background()
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		handler: h, cfg: cfg, log: log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]*connState),
		quit:      make(chan struct{}),
	}
}

// Serve accepts connections on ln and serves each on its own goroutine until Shutdown or
// Close, then returns ErrServerClosed; it closes ln. Another error means ln failed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		rwc, err := ln.Accept()
		if err != nil {
			if s.shuttingDown() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accepting connections on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors, or a connection aborted before it was accepted: the
			// listener itself is fine, so wait a little and go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting a connection failed; retrying", "listener", ln.Addr().String(), "in", backoff, "error", err)
			select {
			case <-time.After(backoff):
			case <-s.quit:
			}
			continue
		}
		backoff = 0
		c := s.newConn(rwc)
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			rwc.Close()
			return ErrServerClosed
		}
		s.conns[c] = &connState{idle: true}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// Shutdown stops accepting, closes idle connections and waits for the requests in progress
// to be answered; their connections then close. When ctx ends first it closes every
// connection, ends the contexts of the requests still in progress and returns ctx's error
// without waiting for their handlers.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.beginShutdownLocked()
	for c, st := range s.conns {
		if st.idle {
			c.rwc.Close()
		}
	}
	var drained chan struct{}
	if len(s.conns) > 0 {
		if s.drained == nil {
			s.drained = make(chan struct{})
		}
		drained = s.drained
	}
	s.mu.Unlock()
	if drained != nil {
		select {
		case <-drained:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
	s.wg.Wait()
	return nil
}

// Close stops accepting, closes every connection at once and ends the contexts of the
// requests in progress. It does not wait for their handlers.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beginShutdownLocked()
	for c, st := range s.conns {
		c.rwc.Close()
		if st.cancel != nil {
			st.cancel()
		}
	}
	return nil
}

func (s *Server) beginShutdownLocked() {
	if !s.shutdown {
		s.shutdown = true
		close(s.quit)
	}
	for ln := range s.listeners {
		ln.Close()
	}
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// setIdle records whether c waits for a request; it returns false when c should close
// instead (the server is shutting down).
func (s *Server) setIdle(c *conn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c].idle = idle
	return !s.shutdown
}

func (s *Server) setCancel(c *conn, cancel context.CancelFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c].cancel = cancel
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if len(s.conns) == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
}

// conn is one client connection, used by its goroutine only (and by its watch goroutine
// while a handler runs, see watch).
type conn struct {
	s      *Server
	rwc    net.Conn
	remote string
	cr     connReader
	br     *bufio.Reader
	bw     *bufio.Writer

	watching  bool
	watchDone chan struct{}
	stopping  atomic.Bool // the watch is being stopped: its read error means nothing
	gone      atomic.Bool // the watch saw the client disconnect
}

func (s *Server) newConn(rwc net.Conn) *conn {
	c := &conn{s: s, rwc: rwc, remote: rwc.RemoteAddr().String()}
	c.cr.rwc = rwc
	c.br = bufio.NewReaderSize(&c.cr, s.cfg.MaxHeaderBytes+512)
	c.bw = bufio.NewWriterSize(deadlineWriter{rwc, s.cfg.WriteTimeout}, 4<<10)
	return c
}

func (s *Server) serveConn(c *conn) {
	defer s.wg.Done()
	defer s.untrack(c)
	defer c.rwc.Close()
	first := true
	for {
		wait := s.cfg.IdleTimeout
		if first {
			wait = s.cfg.ReadHeaderTimeout
		}
		c.rwc.SetReadDeadline(time.Now().Add(wait))
		if _, err := c.br.Peek(1); err != nil {
			if first && isTimeout(err) {
				s.log.Info("refused a connection", "remote", c.remote,
					"error", fmt.Errorf("no request within %v", s.cfg.ReadHeaderTimeout))
			}
			return // the client left, or idled too long
		}
		if !s.setIdle(c, false) {
			return
		}
		if !first {
			c.rwc.SetReadDeadline(time.Now().Add(s.cfg.ReadHeaderTimeout))
		}
		first = false
		req, err := readRequest(c.br, s.cfg.MaxHeaderBytes, s.cfg.MaxBodyBytes)
		if err != nil {
			c.refuse(err)
			return
		}
		if !c.serve(req) || !s.setIdle(c, true) {
			return
		}
	}
}

// serve runs the handler on req and sends its answer; it reports whether the connection
// can carry another request.
func (c *conn) serve(req *Request) bool {
	ctx, cancel := context.WithCancel(c.s.cfg.BaseContext)
	defer cancel()
	c.s.setCancel(c, cancel)
	defer c.s.setCancel(c, nil)
	req.ctx, req.RemoteAddr = ctx, c.remote
	b := &body{c: c, req: req, remaining: req.ContentLength, cancel: cancel}
	req.Body = b
	c.rwc.SetReadDeadline(time.Now().Add(c.s.cfg.ReadBodyTimeout))
	if b.remaining == 0 {
		c.watch(cancel)
	}
	w := &Response{c: c, req: req, header: make(textproto.MIMEHeader)}
	ok := c.run(w, req)
	c.stopWatch()
	if !ok {
		if !w.sent {
			w.header = textproto.MIMEHeader{}
			w.status, w.buf = 0, nil
			w.req.closeAfter = true
			Error(w, "internal error", StatusInternalServerError)
			w.finish()
		}
		return false
	}
	if b.remaining > 0 && req.expectContinue {
		// The client waits for a 100 Continue before sending the body the handler did not
		// want: answer and close rather than ask for it.
		w.closeAfter = true
	} else if b.remaining > 0 && b.err == nil {
		// The handler left (part of) the body: skip it.
		c.rwc.SetReadDeadline(time.Now().Add(c.s.cfg.ReadBodyTimeout))
		if n, err := io.CopyN(io.Discard, c.br, b.remaining); err != nil {
			b.remaining -= n
			w.closeAfter = true
		} else {
			b.remaining = 0
		}
	}
	if b.err != nil {
		w.req.closeAfter = true
	}
	if err := w.finish(); err != nil {
		return false
	}
	return !w.closeAfter && !c.gone.Load() && b.remaining == 0
}

// run calls the handler; it returns false if the handler panicked.
func (c *conn) run(w *Response, req *Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			c.s.log.Error("handler panicked", "method", req.Method, "path", req.Path, "remote", c.remote,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			ok = false
		}
	}()
	c.s.handler(w, req)
	return true
}

// refuse answers a request readRequest refused (or that timed out half-read) and closes.
func (c *conn) refuse(err error) {
	var re *requestError
	switch {
	case errors.As(err, &re):
	case isTimeout(err):
		re = &requestError{code: StatusRequestTimeout, msg: fmt.Sprintf("the request line and header fields did not arrive within %v", c.s.cfg.ReadHeaderTimeout)}
	default:
		c.s.log.Info("reading a request failed", "remote", c.remote, "error", err)
		return
	}
	c.s.log.Info("refused a request", "remote", c.remote, "error", re)
	msg := fmt.Sprintf("%d %s: %s\n", re.code, StatusText(re.code), re.msg)
	fmt.Fprintf(c.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		re.code, StatusText(re.code), len(msg), msg)
	if c.bw.Flush() != nil {
		return
	}
	// Closing with unread input would send a reset, which may destroy the answer before
	// the client reads it: end the sending side and read what the client still sends, for
	// a little while.
	if tc, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		c.rwc.SetReadDeadline(time.Now().Add(lingerTime))
		io.CopyN(io.Discard, c.rwc, lingerBytes)
	}
}

// How long and how much a refused client's leftover input is read before closing.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 256 << 10
)

// watch reads the connection while the handler runs, to end the request's context when the
// client disconnects: a handler that records a profile over N seconds stops then. A byte
// that arrives instead (the next request, pipelined) is kept for the next read.
func (c *conn) watch(cancel context.CancelFunc) {
	if c.watching || c.br.Buffered() > 0 {
		return // the next request is already here, so the client has not gone
	}
	c.rwc.SetReadDeadline(time.Time{})
	c.watching = true
	c.stopping.Store(false)
	c.watchDone = make(chan struct{})
	go func() {
		defer close(c.watchDone)
		var b [1]byte
		n, err := c.rwc.Read(b[:])
		if n == 1 {
			c.cr.pending, c.cr.hasPending = b[0], true
			return
		}
		if err != nil && !c.stopping.Load() {
			c.gone.Store(true)
			cancel()
		}
	}()
}

// stopWatch ends the watch goroutine and waits for it.
func (c *conn) stopWatch() {
	if !c.watching {
		return
	}
	c.stopping.Store(true)
	c.rwc.SetReadDeadline(time.Unix(1, 0))
	<-c.watchDone
	c.watching = false
	c.rwc.SetReadDeadline(time.Time{})
}

// connReader reads the connection, first returning the byte a watch read.
type connReader struct {
	rwc        net.Conn
	pending    byte
	hasPending bool
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.hasPending && len(p) > 0 {
		p[0], r.hasPending = r.pending, false
		return 1, nil
	}
	return r.rwc.Read(p)
}

// deadlineWriter gives each write to the connection timeout to make progress.
type deadlineWriter struct {
	rwc     net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	w.rwc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.rwc.Write(p)
}

// body reads a request body of known length from the connection.
type body struct {
	c         *conn
	req       *Request
	remaining int64
	cancel    context.CancelFunc
	err       error
}

func (b *body) Read(p []byte) (int, error) {
	if b.remaining == 0 {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.req.expectContinue {
		b.req.expectContinue = false
		b.c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := b.c.bw.Flush(); err != nil {
			b.err = fmt.Errorf("answering 100 Continue: %w", err)
			return 0, b.err
		}
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.c.br.Read(p)
	b.remaining -= int64(n)
	if b.remaining == 0 {
		b.c.watch(b.cancel)
		return n, io.EOF
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		b.err = fmt.Errorf("reading the request body: %w", err)
		return n, b.err
	}
	return n, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
