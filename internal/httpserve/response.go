package httpserve

import (
	"bufio"
	"errors"
	"io"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// bufferLimit is how much of a response body is held back to be sent with a Content-Length;
// a longer body, or one written after a pause, streams in chunks.
const bufferLimit = 32 << 10

// Response writes the answer to one request. Until the handler has written bufferLimit bytes
// nothing is sent, so a handler may still change the status or the header fields after
// writing a little of the body; once the body streams, the status and header fields are
// fixed. Its methods must not be called after the handler returns, nor from two goroutines
// at once.
type Response struct {
	c      *conn
	req    *Request
	header textproto.MIMEHeader
	status int  // 0 until the handler sets one or writes
	sent   bool // the status line and header fields are on their way
	// chunked: the body streams with chunked transfer encoding; otherwise once sent it is
	// close-delimited (HTTP/1.0) or already complete.
	chunked bool
	// closeAfter: the connection must close after this response.
	closeAfter bool
	buf        []byte
	err        error // the first write error; the connection then closes
}

// Header returns the response header fields, to set before the first Write. Content-Length,
// Transfer-Encoding and Connection are the server's own: values the handler sets there are
// not sent.
func (w *Response) Header() textproto.MIMEHeader { return w.header }

// WriteHeader sets the response status; the first call wins, and without one the status is
// 200. A code outside 200-999 is sent as 500: informational answers are the server's.
func (w *Response) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 200 || code > 999 {
		code = StatusInternalServerError
	}
	w.status = code
}

// Write adds p to the response body. It fails once the client's connection has.
func (w *Response) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = StatusOK
	}
	if w.err != nil {
		return 0, w.err
	}
	if !bodyAllowed(w.status) {
		return 0, errors.New("httpserve: this response status has no body")
	}
	if !w.sent {
		if len(w.buf)+len(p) <= bufferLimit {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.sendHeader(-1)
		if w.err == nil && len(w.buf) > 0 {
			w.writeBody(w.buf)
			w.buf = nil
		}
	}
	w.writeBody(p)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Error answers with code and msg as plain text. The handler should not write after it.
func Error(w *Response, msg string, code int) {
	w.header.Set("Content-Type", "text/plain; charset=utf-8")
	w.header.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// finish sends what is buffered, or ends the chunked body, and flushes.
func (w *Response) finish() error {
	if w.status == 0 {
		w.status = StatusOK
	}
	if !w.sent {
		w.sendHeader(len(w.buf))
		if len(w.buf) > 0 {
			w.writeBody(w.buf)
		}
	} else if w.chunked && w.err == nil && w.req.Method != "HEAD" {
		_, w.err = w.c.bw.WriteString("0\r\n\r\n")
	}
	if w.err == nil {
		w.err = w.c.bw.Flush()
	}
	return w.err
}

// sendHeader writes the status line and header fields: with a Content-Length when length is
// known (>= 0), else streaming.
func (w *Response) sendHeader(length int) {
	w.sent = true
	if w.req.closeAfter || w.c.s.shuttingDown() {
		w.closeAfter = true
	}
	bw := w.c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(w.status))
	bw.WriteByte(' ')
	bw.WriteString(StatusText(w.status))
	bw.WriteString("\r\n")
	keys := make([]string, 0, len(w.header))
	for k := range w.header {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection", "Date":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range w.header[k] {
			writeField(bw, k, v)
		}
	}
	writeField(bw, "Date", time.Now().UTC().Format(dateFormat))
	switch {
	case !bodyAllowed(w.status):
	case length >= 0:
		writeField(bw, "Content-Length", strconv.Itoa(length))
	case w.req.Proto == "HTTP/1.1":
		w.chunked = true
		writeField(bw, "Transfer-Encoding", "chunked")
	default:
		w.closeAfter = true // the body ends where the connection does
	}
	if w.closeAfter {
		writeField(bw, "Connection", "close")
	}
	_, w.err = bw.WriteString("\r\n")
}

// dateFormat is the IMF-fixdate of RFC 9110 section 5.6.7.
const dateFormat = "Mon, 02 Jan 2006 15:04:05 GMT"

// writeField writes one header field; a line break in the name or value (which a handler
// might copy from input) becomes a space rather than a second field.
func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(noNewlines.Replace(k))
	bw.WriteString(": ")
	bw.WriteString(noNewlines.Replace(v))
	bw.WriteString("\r\n")
}

var noNewlines = strings.NewReplacer("\r", " ", "\n", " ")

// writeBody writes p after the header fields: as a chunk when chunked, nothing for HEAD.
func (w *Response) writeBody(p []byte) {
	if w.err != nil || len(p) == 0 || w.req.Method == "HEAD" {
		return
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	if _, w.err = bw.Write(p); w.err != nil {
		return
	}
	if w.chunked {
		_, w.err = bw.WriteString("\r\n")
	}
}
