package grpcwire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/h2"
)

// Stream is one call in progress. One goroutine may Send (and CloseSend) while another Recvs;
// two Sends or two Recvs must not run at once.
//
// A stream holds an HTTP/2 stream until its context ends or Recv returns an error; a caller
// that stops before either must cancel the context.
type Stream struct {
	method string
	conn   *Conn
	parent context.Context // the caller's, to tell its end from ours
	ctx    context.Context
	cancel context.CancelFunc
	hs     *h2stream
	unary  bool

	// Used by Recv only.
	checked bool
	hdr     [5]byte
	final   error // what Recv returns from now on: io.EOF or an *Error

	sendMu  sync.Mutex
	sendErr error
}

// NewStream starts a call of method (/package.Service/Method) whose messages the caller sends
// with Send and receives with Recv, until Recv returns io.EOF (the server ended with OK) or an
// error. It connects if need be and sends the headers; the server's answer is awaited by the
// first Recv. The call ends with ctx; its deadline, if any, is sent as grpc-timeout.
func (c *Conn) NewStream(ctx context.Context, method string, md Metadata) (*Stream, error) {
	return c.start(ctx, method, md, false)
}

// Invoke makes a unary call of method with the request message req and returns the response
// message.
func (c *Conn) Invoke(ctx context.Context, method string, md Metadata, req []byte) ([]byte, error) {
	s, err := c.start(ctx, method, md, true)
	if err != nil {
		return nil, err
	}
	defer s.cancel()
	// A failed write is the stream's failure, or a server that answered without reading the
	// request (a trailers-only status): Recv tells which.
	s.hs.write(s.ctx, frame(req), true)
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

func (c *Conn) start(ctx context.Context, method string, md Metadata, unary bool) (*Stream, error) {
	if !strings.HasPrefix(method, "/") || strings.Count(method, "/") != 2 || !validValue(method) || strings.ContainsAny(method, " ?#") {
		return nil, &Error{Method: method, Code: Internal, Message: "method is not of the form /package.Service/Method"}
	}
	h, err := c.header(method, md)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		h = append(h, hpack.HeaderField{Name: "grpc-timeout", Value: timeout(time.Until(d))})
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Stream{method: method, conn: c, parent: ctx, ctx: sctx, cancel: cancel, unary: unary}
	// A connection that stops taking streams between transport and open (GOAWAY, a failure)
	// is replaced: a few tries, for a server that keeps going away.
	for try := 0; ; try++ {
		t, err := c.transport(sctx)
		if err != nil {
			cancel()
			if errors.Is(err, ErrClosed) {
				return nil, &Error{Method: method, Code: Canceled, Message: "the connection is closed", Err: ErrClosed}
			}
			return nil, s.openError(fmt.Errorf("connecting to %s: %w", c.address, err))
		}
		s.hs, err = t.open(sctx, h)
		if errors.Is(err, errUnusable) && try < 3 {
			continue
		}
		if err != nil {
			cancel()
			return nil, s.openError(err)
		}
		break
	}
	// The stream is the transport's until the call's context ends: then it is reset, unless
	// both sides had ended it.
	context.AfterFunc(sctx, s.hs.abort)
	return s, nil
}

// openError describes a failure to start the call.
func (s *Stream) openError(err error) error {
	e := s.localError(err, "opening the stream")
	if errors.Is(e, io.EOF) {
		e = &Error{Method: s.method, Code: Unavailable, Message: "opening the stream: " + err.Error(), Err: err}
	}
	return e
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

// Send sends one message, waiting while the server's flow-control windows are full. After the
// stream has ended it returns the error that ended it (io.EOF if the server ended it: Recv then
// tells what the server said).
func (s *Stream) Send(msg []byte) error {
	if s.unary {
		return &Error{Method: s.method, Code: Internal, Message: "Send on a unary call"}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendErr != nil {
		return s.sendErr
	}
	if err := s.hs.write(s.ctx, frame(msg), false); err != nil {
		s.sendErr = s.localError(err, "sending")
		return s.sendErr
	}
	return nil
}

// CloseSend tells the server that the client sends no more messages; Recv goes on.
func (s *Stream) CloseSend() error {
	if s.unary {
		return nil
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendErr != nil {
		return nil
	}
	s.sendErr = &Error{Method: s.method, Code: Internal, Message: "Send after CloseSend"}
	// A stream that has already ended needs no END_STREAM: Recv tells how it ended.
	s.hs.write(s.ctx, nil, true)
	return nil
}

// localError describes err, met while doing what, as an *Error: the context's end if that is
// the cause, io.EOF if either side ended the stream, the server's reset or the connection's
// failure otherwise.
func (s *Stream) localError(err error, doing string) error {
	if cerr := s.ctxErr(); cerr != nil {
		code := Canceled
		if errors.Is(cerr, context.DeadlineExceeded) {
			code = DeadlineExceeded
		}
		return &Error{Method: s.method, Code: code, Message: cerr.Error(), Err: cerr}
	}
	var re *resetError
	switch {
	case errors.Is(err, errAborted) || errors.Is(err, errServerDone) || errors.Is(err, context.Canceled):
		return io.EOF
	case errors.As(err, &re):
		return &Error{Method: s.method, Code: resetCode(re.code), Message: doing + ": " + err.Error(), Err: err}
	}
	return &Error{Method: s.method, Code: Unavailable, Message: doing + ": " + err.Error(), Err: err}
}

// ctxErr is the caller's context's error, DeadlineExceeded as soon as its deadline has passed
// (the context's timer may not have run yet when the server's status for it arrives).
func (s *Stream) ctxErr() error {
	if err := s.parent.Err(); err != nil {
		return err
	}
	if d, ok := s.parent.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// resetCode maps RST_STREAM's error code to a gRPC status, as gRPC's HTTP/2 protocol document
// says.
func resetCode(c h2.ErrCode) Code {
	switch c {
	case h2.ErrCodeRefusedStream:
		return Unavailable
	case h2.ErrCodeCancel:
		return Canceled
	case h2.ErrCodeEnhanceYourCalm:
		return ResourceExhausted
	case h2.ErrCodeInadequateSecurity:
		return PermissionDenied
	}
	return Internal
}

// Recv returns the next message. At the end of the stream it returns io.EOF when the server
// sent status OK, and an *Error otherwise; every later call returns the same.
func (s *Stream) Recv() ([]byte, error) {
	if s.final != nil {
		return nil, s.final
	}
	msg, err := s.recv()
	if err != nil {
		if c := CodeOf(err); (c == DeadlineExceeded || c == Canceled) && s.ctxErr() != nil {
			// The server's status for our own deadline or cancellation: say it is ours.
			err = s.localError(err, "receiving")
		}
		s.final = err
		s.cancel()
		return nil, err
	}
	return msg, nil
}

func (s *Stream) recv() ([]byte, error) {
	if !s.checked {
		status, h, err := s.hs.awaitHeaders(s.ctx)
		if err != nil {
			return nil, s.bodyError(err)
		}
		s.checked = true
		if err := s.checkHeaders(status, h); err != nil {
			return nil, err
		}
	}
	body := reader{s.hs, s.ctx}
	if _, err := io.ReadFull(body, s.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, s.status(s.hs.trailers())
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
func (s *Stream) checkHeaders(status int, h map[string]string) error {
	if h["grpc-status"] != "" {
		return s.status(h)
	}
	if status != 200 {
		return &Error{Method: s.method, Code: httpCode(status), Message: fmt.Sprintf("HTTP status %d without a gRPC status", status)}
	}
	ct := h["content-type"]
	if ct != "application/grpc" && !strings.HasPrefix(ct, "application/grpc+") && !strings.HasPrefix(ct, "application/grpc;") {
		return &Error{Method: s.method, Code: Unknown, Message: fmt.Sprintf("response content-type %q is not gRPC", ct)}
	}
	if enc := h["grpc-encoding"]; enc != "" && enc != "identity" {
		return &Error{Method: s.method, Code: Internal, Message: fmt.Sprintf("the server compresses with %q; this client asked for none", enc)}
	}
	return nil
}

// status turns the grpc-status and grpc-message fields of h (trailers, or the headers of a
// trailers-only response) into io.EOF for OK or an *Error.
func (s *Stream) status(h map[string]string) error {
	v := h["grpc-status"]
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
	return &Error{Method: s.method, Code: Code(n), Message: decodeMessage(h["grpc-message"])}
}
