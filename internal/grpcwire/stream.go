package grpcwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Stream is one call in progress. One goroutine may Send (and CloseSend) while another Recvs;
// two Sends or two Recvs must not run at once.
//
// A stream holds a goroutine and an HTTP/2 stream until its context ends or Recv returns an
// error; a caller that stops before either must cancel the context.
type Stream struct {
	method string
	conn   *Conn
	parent context.Context // the caller's, to tell its end from ours
	ctx    context.Context
	cancel context.CancelFunc
	pw     *io.PipeWriter // the request body; nil for a unary call

	ready chan struct{} // closed when the round trip returned
	resp  *http.Response
	rtErr error

	// Used by Recv only.
	checked bool
	hdr     [5]byte
	final   error // what Recv returns from now on: io.EOF or an *Error

	sendMu  sync.Mutex
	sendErr error
}

// NewStream starts a call of method (/package.Service/Method) whose messages the caller sends
// with Send and receives with Recv, until Recv returns io.EOF (the server ended with OK) or an
// error. Headers go out at once; the server's answer is awaited by the first Recv. The call
// ends with ctx; its deadline, if any, is sent as grpc-timeout.
func (c *Conn) NewStream(ctx context.Context, method string, md Metadata) (*Stream, error) {
	return c.start(ctx, method, md, nil)
}

// Invoke makes a unary call of method with the request message req and returns the response
// message.
func (c *Conn) Invoke(ctx context.Context, method string, md Metadata, req []byte) ([]byte, error) {
	body := bytes.NewReader(frame(req))
	s, err := c.start(ctx, method, md, body)
	if err != nil {
		return nil, err
	}
	defer s.cancel()
	resp, err := s.Recv()
	if errors.Is(err, io.EOF) {
		return nil, &Error{Method: method, Code: Internal, Message: "the server ended the call with OK but sent no response message"}
	}
	if err != nil {
		return nil, err
	}
	switch _, err := s.Recv(); {
	case errors.Is(err, io.EOF):
		return resp, nil
	case err != nil:
		return nil, err
	}
	return nil, &Error{Method: method, Code: Internal, Message: "the server sent more than one response message to a unary call"}
}

func (c *Conn) start(ctx context.Context, method string, md Metadata, body io.Reader) (*Stream, error) {
	if !strings.HasPrefix(method, "/") || strings.Count(method, "/") != 2 {
		return nil, &Error{Method: method, Code: Internal, Message: "method is not of the form /package.Service/Method"}
	}
	h, err := c.header(method, md)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		h["Grpc-Timeout"] = []string{timeout(time.Until(d))}
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, &Error{Method: method, Code: Canceled, Message: "the connection is closed", Err: ErrClosed}
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Stream{method: method, conn: c, parent: ctx, ctx: sctx, cancel: cancel, ready: make(chan struct{})}
	var pr *io.PipeReader
	if body == nil {
		pr, s.pw = io.Pipe()
		body = pr
	}
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, c.base+method, body)
	if err != nil {
		cancel()
		return nil, &Error{Method: method, Code: Internal, Message: err.Error(), Err: err}
	}
	req.Header = h
	if s.pw == nil {
		req.ContentLength = int64(body.(*bytes.Reader).Len())
	} else {
		req.ContentLength = -1
	}
	// The round trip returns when the server's headers arrive, which a streaming server may
	// send only after the caller's first messages: it runs beside the caller, and stays to
	// release the response when the stream ends.
	go func() {
		resp, err := c.rt.RoundTrip(req)
		s.resp, s.rtErr = resp, err
		close(s.ready)
		<-sctx.Done()
		if s.pw != nil {
			s.pw.CloseWithError(context.Canceled)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}()
	return s, nil
}

// frame prefixes msg with gRPC's 5 bytes: not compressed, then the length.
func frame(msg []byte) []byte {
	b := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:5], uint32(len(msg)))
	copy(b[5:], msg)
	return b
}

// timeout formats d as grpc-timeout: at most 8 digits and a unit.
func timeout(d time.Duration) string {
	if d <= 0 {
		d = 1 // already past: the server fails it at once
	}
	const max = 99999999
	units := []struct {
		d    time.Duration
		unit string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}, {time.Hour, "H"}}
	for _, u := range units {
		// Round up so the server's deadline is never earlier than ours.
		if n := (d + u.d - 1) / u.d; n <= max {
			return strconv.FormatInt(int64(n), 10) + u.unit
		}
	}
	return strconv.Itoa(max) + "H"
}

// Send sends one message. After the stream has ended it returns the error that ended it
// (io.EOF if the server ended it with OK: Recv then tells what the server said).
func (s *Stream) Send(msg []byte) error {
	if s.pw == nil {
		return &Error{Method: s.method, Code: Internal, Message: "Send on a unary call"}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendErr != nil {
		return s.sendErr
	}
	if _, err := s.pw.Write(frame(msg)); err != nil {
		s.sendErr = s.localError(err, "sending")
		return s.sendErr
	}
	return nil
}

// CloseSend tells the server that the client sends no more messages; Recv goes on.
func (s *Stream) CloseSend() error {
	if s.pw == nil {
		return nil
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendErr == nil {
		s.sendErr = &Error{Method: s.method, Code: Internal, Message: "Send after CloseSend"}
	}
	return s.pw.Close()
}

// localError describes err, met while doing what, as an *Error: the context's end if that is
// the cause, the transport's failure otherwise.
func (s *Stream) localError(err error, doing string) error {
	if cerr := s.parent.Err(); cerr != nil {
		code := Canceled
		if errors.Is(cerr, context.DeadlineExceeded) {
			code = DeadlineExceeded
		}
		return &Error{Method: s.method, Code: code, Message: cerr.Error(), Err: cerr}
	}
	if errors.Is(err, io.ErrClosedPipe) || errors.Is(err, context.Canceled) {
		return io.EOF
	}
	return &Error{Method: s.method, Code: Unavailable, Message: doing + ": " + err.Error(), Err: err}
}

// Recv returns the next message. At the end of the stream it returns io.EOF when the server
// sent status OK, and an *Error otherwise; every later call returns the same.
func (s *Stream) Recv() ([]byte, error) {
	if s.final != nil {
		return nil, s.final
	}
	msg, err := s.recv()
	if err != nil {
		s.final = err
		s.cancel()
		return nil, err
	}
	return msg, nil
}

func (s *Stream) recv() ([]byte, error) {
	<-s.ready
	if s.rtErr != nil {
		err := s.localError(s.rtErr, "opening the stream")
		if errors.Is(err, io.EOF) {
			err = &Error{Method: s.method, Code: Unavailable, Message: "opening the stream: " + s.rtErr.Error(), Err: s.rtErr}
		}
		return nil, err
	}
	if !s.checked {
		s.checked = true
		if err := s.checkHeaders(); err != nil {
			return nil, err
		}
	}
	body := s.resp.Body
	if _, err := io.ReadFull(body, s.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, s.status(s.resp.Trailer)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &Error{Method: s.method, Code: Internal, Message: "the server ended the stream inside a message header"}
		}
		return nil, s.bodyError(err)
	}
	switch s.hdr[0] {
	case 0:
	case 1:
		return nil, &Error{Method: s.method, Code: Internal, Message: "the server sent a compressed message; this client asked for none"}
	default:
		return nil, &Error{Method: s.method, Code: Internal, Message: fmt.Sprintf("message flags %#x: not a gRPC message", s.hdr[0])}
	}
	n := binary.BigEndian.Uint32(s.hdr[1:5])
	if uint64(n) > uint64(s.conn.opts.MaxRecvSize) {
		return nil, &Error{Method: s.method, Code: ResourceExhausted, Message: fmt.Sprintf("received a message of %d bytes, larger than the limit of %d", n, s.conn.opts.MaxRecvSize)}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(body, msg); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &Error{Method: s.method, Code: Internal, Message: fmt.Sprintf("the server ended the stream inside a message of %d bytes", n)}
		}
		return nil, s.bodyError(err)
	}
	return msg, nil
}

func (s *Stream) bodyError(err error) error {
	e := s.localError(err, "receiving")
	if errors.Is(e, io.EOF) {
		return &Error{Method: s.method, Code: Unavailable, Message: "receiving: " + err.Error(), Err: err}
	}
	return e
}

// checkHeaders checks the response's headers: a trailers-only response (the status in the
// headers) ends the call, and a response that is not gRPC fails it.
func (s *Stream) checkHeaders() error {
	r := s.resp
	if r.Header.Get("Grpc-Status") != "" {
		return s.status(r.Header)
	}
	if r.StatusCode != http.StatusOK {
		return &Error{Method: s.method, Code: httpCode(r.StatusCode), Message: fmt.Sprintf("HTTP status %d without a gRPC status", r.StatusCode)}
	}
	ct := r.Header.Get("Content-Type")
	if ct != "application/grpc" && !strings.HasPrefix(ct, "application/grpc+") && !strings.HasPrefix(ct, "application/grpc;") {
		return &Error{Method: s.method, Code: Unknown, Message: fmt.Sprintf("response content-type %q is not gRPC", ct)}
	}
	if enc := r.Header.Get("Grpc-Encoding"); enc != "" && enc != "identity" {
		return &Error{Method: s.method, Code: Internal, Message: fmt.Sprintf("the server compresses with %q; this client asked for none", enc)}
	}
	return nil
}

// status turns the grpc-status and grpc-message fields of h (trailers, or the headers of a
// trailers-only response) into io.EOF for OK or an *Error.
func (s *Stream) status(h http.Header) error {
	v := h.Get("Grpc-Status")
	if v == "" {
		return &Error{Method: s.method, Code: Internal, Message: "the server ended the stream without a grpc-status"}
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return &Error{Method: s.method, Code: Unknown, Message: fmt.Sprintf("grpc-status %q is not a number", v)}
	}
	if Code(n) == OK {
		return io.EOF
	}
	return &Error{Method: s.method, Code: Code(n), Message: decodeMessage(h.Get("Grpc-Message"))}
}
