package httpserve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// Request is one request as a handler sees it. Its fields must not be changed.
type Request struct {
	// Method is the request method, e.g. "GET".
	Method string
	// Path is the request target's path, percent-decoded ("/debug/pprof/heap").
	Path string
	// RawQuery is the request target's query without the '?', still encoded.
	RawQuery string
	// Proto is "HTTP/1.1" or "HTTP/1.0".
	Proto string
	// Header holds the request's header fields under their canonical keys
	// (textproto.CanonicalMIMEHeaderKey: "Content-Type").
	Header textproto.MIMEHeader
	// ContentLength is the length of Body; 0 for a request without a body.
	ContentLength int64
	// Body reads the request body (ContentLength bytes). It is never nil; it must be read by
	// the handler that serves the request, not after that handler has returned.
	Body io.Reader
	// RemoteAddr is the client's address ("10.0.0.1:41234").
	RemoteAddr string

	ctx   context.Context
	query url.Values
	// closeAfter is set when the client asked to close the connection (or spoke HTTP/1.0).
	closeAfter bool
	// expectContinue is set when the client waits for a 100 Continue before sending its body.
	expectContinue bool
}

// Context returns the request's context: it ends when the client disconnects, when the
// handler returns, or when the server's Shutdown stops waiting for the handler.
func (r *Request) Context() context.Context { return r.ctx }

// Query returns the parsed query. Malformed pairs are left out, as url.ParseQuery does.
func (r *Request) Query() url.Values {
	if r.query == nil {
		r.query, _ = url.ParseQuery(r.RawQuery)
	}
	return r.query
}

// requestError is input the server refuses: it answers code with msg and closes the
// connection.
type requestError struct {
	code int
	msg  string
}

func (e *requestError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.code, StatusText(e.code), e.msg)
}

func refuse(code int, format string, args ...any) error {
	return &requestError{code: code, msg: fmt.Sprintf(format, args...)}
}

// maxEmptyLines is how many empty lines before a request line are skipped (RFC 9112 section
// 2.2 asks servers to skip at least one, which some clients send after a POST body).
const maxEmptyLines = 4

// readRequest reads a request line and header block of at most maxHeader bytes from br and
// checks them; the body is left in br. A refused request comes back as a *requestError; an
// error of br (a timeout, the client gone) is returned wrapped.
func readRequest(br *bufio.Reader, maxHeader int, maxBody int64) (*Request, error) {
	n := 0
	readLine := func(what string, tooLong int) ([]byte, error) {
		line, err := br.ReadSlice('\n')
		n += len(line)
		if errors.Is(err, bufio.ErrBufferFull) || n > maxHeader {
			return nil, refuse(tooLong, "%s: the request line and header fields are longer than %d bytes", what, maxHeader)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("reading the %s: %w", what, err)
		}
		line = line[:len(line)-1]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		return line, nil
	}

	var line []byte
	var err error
	for i := 0; ; i++ {
		if line, err = readLine("request line", StatusURITooLong); err != nil {
			return nil, err
		}
		if len(line) > 0 {
			break
		}
		if i == maxEmptyLines {
			return nil, refuse(StatusBadRequest, "more than %d empty lines instead of a request line", maxEmptyLines)
		}
	}
	r, err := parseRequestLine(line)
	if err != nil {
		return nil, err
	}

	r.Header = make(textproto.MIMEHeader)
	for {
		line, err := readLine("header fields", StatusRequestHeaderFieldsTooLarge)
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if err := addHeaderField(r.Header, line); err != nil {
			return nil, err
		}
	}
	if err := r.checkHeader(maxBody); err != nil {
		return nil, err
	}
	return r, nil
}

// parseRequestLine parses "METHOD target HTTP/1.x".
func parseRequestLine(line []byte) (*Request, error) {
	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	target, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 || bytes.IndexByte(proto, ' ') >= 0 {
		return nil, refuse(StatusBadRequest, "request line %q: want METHOD TARGET HTTP/1.1", clip(line))
	}
	if !isToken(method) {
		return nil, refuse(StatusBadRequest, "method %q is not a token", clip(method))
	}
	r := &Request{Method: string(method)}
	switch string(proto) {
	case "HTTP/1.1":
		r.Proto = "HTTP/1.1"
	case "HTTP/1.0":
		r.Proto, r.closeAfter = "HTTP/1.0", true
	default:
		if len(proto) == len("HTTP/x.y") && bytes.HasPrefix(proto, []byte("HTTP/")) && isDigit(proto[5]) && proto[6] == '.' && isDigit(proto[7]) {
			return nil, refuse(StatusHTTPVersionNotSupported, "version %q: this server speaks HTTP/1.1 and HTTP/1.0", clip(proto))
		}
		return nil, refuse(StatusBadRequest, "request line %q: version %q is not HTTP/1.1", clip(line), clip(proto))
	}
	u, err := url.ParseRequestURI(string(target))
	if err != nil || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return nil, refuse(StatusBadRequest, "request target %q: want a path such as /healthz/ready", clip(target))
	}
	r.Path, r.RawQuery = u.Path, u.RawQuery
	return r, nil
}

// addHeaderField parses "Name: value" into h.
func addHeaderField(h textproto.MIMEHeader, line []byte) error {
	if line[0] == ' ' || line[0] == '\t' {
		return refuse(StatusBadRequest, "header line %q: folded header values are not accepted", clip(line))
	}
	name, value, ok := bytes.Cut(line, []byte{':'})
	if !ok || !isToken(name) {
		return refuse(StatusBadRequest, "header line %q: want Name: value", clip(line))
	}
	value = bytes.Trim(value, " \t")
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return refuse(StatusBadRequest, "header %s: control character %#x in the value", clip(name), c)
		}
	}
	key := textproto.CanonicalMIMEHeaderKey(string(name))
	h[key] = append(h[key], string(value))
	return nil
}

// checkHeader reads the fields the server itself acts on: Connection, Content-Length,
// Transfer-Encoding and Expect.
func (r *Request) checkHeader(maxBody int64) error {
	// An HTTP/1.0 client's "Connection: keep-alive" is not honoured: such connections close
	// after one answer, which every client handles.
	for _, v := range r.Header["Connection"] {
		for opt := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(opt), "close") {
				r.closeAfter = true
			}
		}
	}
	if te := r.Header["Transfer-Encoding"]; len(te) > 0 {
		if len(r.Header["Content-Length"]) > 0 {
			return refuse(StatusBadRequest, "both Transfer-Encoding and Content-Length")
		}
		return refuse(StatusNotImplemented, "Transfer-Encoding %q: request bodies must come with a Content-Length", clip([]byte(strings.Join(te, ", "))))
	}
	if cls := r.Header["Content-Length"]; len(cls) > 0 {
		for _, v := range cls[1:] {
			if v != cls[0] {
				return refuse(StatusBadRequest, "Content-Length given twice, as %q and %q", clip([]byte(cls[0])), clip([]byte(v)))
			}
		}
		n, err := strconv.ParseInt(cls[0], 10, 64)
		if err != nil || n < 0 || cls[0][0] == '+' {
			return refuse(StatusBadRequest, "Content-Length %q: want a number of bytes", clip([]byte(cls[0])))
		}
		if n > maxBody {
			return refuse(StatusRequestEntityTooLarge, "Content-Length %d: request bodies are limited to %d bytes", n, maxBody)
		}
		r.ContentLength = n
	}
	if e := r.Header.Get("Expect"); e != "" {
		if !strings.EqualFold(e, "100-continue") {
			return refuse(StatusExpectationFailed, "Expect %q: only 100-continue is understood", clip([]byte(e)))
		}
		r.expectContinue = r.ContentLength > 0 && r.Proto == "HTTP/1.1"
	}
	return nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether b is a non-empty RFC 9110 token (method or header name).
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// clip shortens client input quoted in an error to 64 bytes.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
