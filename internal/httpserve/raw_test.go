package httpserve

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// readAnswer reads from conn until the server closes it, or for one answer with a
// Content-Length, and returns what came.
func readAnswer(t *testing.T, conn net.Conn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return string(got)
		}
		head, body, ok := strings.Cut(string(got), "\r\n\r\n")
		if !ok {
			continue
		}
		var cl int
		for _, line := range strings.Split(head, "\r\n") {
			if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
				fmt.Sscan(v, &cl)
			}
		}
		if len(body) >= cl && strings.Contains(head, "Content-Length: ") {
			return string(got)
		}
	}
}

// logBuffer collects a server's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Bad input gets a 4xx (or 5xx) naming the problem, the connection is closed, the refusal
// is logged, and the server goes on serving.
func TestRawBadRequests(t *testing.T) {
	var logs logBuffer
	_, addr := start(t, testMux().Serve, Config{
		MaxBodyBytes: 100,
		Log:          slog.New(slog.NewTextHandler(&logs, nil)),
	})
	long := strings.Repeat("a", 9000)
	many := strings.Repeat("X-Filler: "+strings.Repeat("b", 90)+"\r\n", 100)
	tests := []struct {
		name, in string
		want     string // prefix of the answer
		wantText string // in the answer
	}{
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "HTTP/1.1 400 ", "want METHOD TARGET HTTP/1.1"},
		{"no version", "GET /hello\r\n\r\n", "HTTP/1.1 400 ", "want METHOD TARGET"},
		{"bad method", "G(T /hello HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", `method "G(T" is not a token`},
		{"http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 505 ", "HTTP/1.1 and HTTP/1.0"},
		{"bad version", "GET / HTTP/one\r\n\r\n", "HTTP/1.1 400 ", `version "HTTP/one"`},
		{"not a path", "GET hello HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", `request target "hello"`},
		{"control in target", "GET /a\x01b HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "request target"},
		{"long target", "GET /" + long + " HTTP/1.1\r\n\r\n", "HTTP/1.1 414 ", "longer than 8192 bytes"},
		{"long header block", "GET /hello HTTP/1.1\r\n" + many + "\r\n", "HTTP/1.1 431 ", "longer than 8192 bytes"},
		{"header without colon", "GET /hello HTTP/1.1\r\nHost x\r\n\r\n", "HTTP/1.1 400 ", `header line "Host x"`},
		{"space before colon", "GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", "HTTP/1.1 400 ", "want Name: value"},
		{"folded header", "GET /hello HTTP/1.1\r\nA: b\r\n c\r\n\r\n", "HTTP/1.1 400 ", "folded"},
		{"control in value", "GET /hello HTTP/1.1\r\nA: b\x00c\r\n\r\n", "HTTP/1.1 400 ", "control character 0x0"},
		{"bad content length", "POST /echo HTTP/1.1\r\nContent-Length: ten\r\n\r\n", "HTTP/1.1 400 ", `Content-Length "ten"`},
		{"negative content length", "POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 400 ", `Content-Length "-1"`},
		{"two content lengths", "POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400 ", "given twice"},
		{"body too large", "POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n", "HTTP/1.1 413 ", "limited to 100 bytes"},
		{"chunked body", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "HTTP/1.1 501 ", "must come with a Content-Length"},
		{"smuggling", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 400 ", "both Transfer-Encoding and Content-Length"},
		{"bad expect", "POST /echo HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na", "HTTP/1.1 417 ", `Expect "200-ok"`},
		{"empty lines", "\r\n\r\n\r\n\r\n\r\n\r\n", "HTTP/1.1 400 ", "empty lines"},
		// Good requests among them.
		{"good", "GET /hello?name=raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK\r\n", "hello raw from GET"},
		{"bare newlines", "GET /hello HTTP/1.1\nConnection: close\n\n", "HTTP/1.1 200 OK\r\n", "hello  from GET"},
		{"http 1.0", "GET /hello HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\n", "Connection: close"},
		{"one empty line first", "\r\nGET /hello HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK\r\n", "hello"},
		{"absolute form", "GET http://x/hello HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK\r\n", "hello"},
		{"body of its length", "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcdef", "HTTP/1.1 200 OK\r\n", "3:abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tt.in); err != nil {
				t.Fatal(err)
			}
			got := readAnswer(t, conn)
			if !strings.HasPrefix(got, tt.want) || !strings.Contains(got, tt.wantText) {
				t.Errorf("got %q, want %q... containing %q", clip([]byte(got))+got[max(0, len(got)-120):], tt.want, tt.wantText)
			}
			if strings.HasPrefix(tt.want, "HTTP/1.1 200") {
				return
			}
			if !strings.Contains(got, "Connection: close\r\n") {
				t.Errorf("refusal without Connection: close: %q", got)
			}
			// The server closed the connection after its answer.
			conn.SetReadDeadline(time.Now().Add(testTimeout))
			if n, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("after the refusal: read %d bytes, %v; want the connection closed", n, err)
			}
		})
	}
	if l := logs.String(); !strings.Contains(l, "refused a request") || !strings.Contains(l, "Content-Length \\\"ten\\\"") {
		t.Errorf("log: got %q, want the refusals", l)
	}
}

// Two requests in one write are both answered, in order.
func TestRawPipelined(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /hello?name=2 HTTP/1.1\r\n\r\nGET /hello?name=3 HTTP/1.1\r\nConnection: close\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	i, j, k := strings.Index(got, "2:hi"), strings.Index(got, "hello 2"), strings.Index(got, "hello 3")
	if strings.Count(got, "HTTP/1.1 200 OK") != 3 || i < 0 || i >= j || j >= k {
		t.Errorf("got %q, want three answers in order", got)
	}
}

// A client that sends its request slower than ReadHeaderTimeout gets 408 and is
// disconnected; one that sends nothing is disconnected; meanwhile others are served.
func TestRawSlowClients(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	io.WriteString(partial, "GET /hello HTTP/1.1\r\nHost: x\r\n") // and never the end
	// slow dribbles a byte at a time; the server cuts it off at the deadline.
	dribbled := make(chan struct{})
	go func() {
		defer close(dribbled)
		for _, c := range []byte("GET /hello HTTP/1.1\r\nX-A: " + strings.Repeat("a", 100)) {
			if _, err := slow.Write([]byte{c}); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// Another client is served meanwhile.
	good, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	io.WriteString(good, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
	if got := readAnswer(t, good); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Errorf("good client: got %q", got)
	}

	for name, conn := range map[string]net.Conn{"partial": partial, "slow": slow} {
		if got := readAnswer(t, conn); !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "did not arrive within 200ms") {
			t.Errorf("%s client: got %q, want 408", name, got)
		}
	}
	silent.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := silent.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("silent client: read %d bytes, %v; want the connection closed", n, err)
	}
	<-dribbled
}

// A kept-alive connection that idles past IdleTimeout is closed.
func TestRawIdleTimeout(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{IdleTimeout: 100 * time.Millisecond})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /hello HTTP/1.1\r\n\r\n")
	if got := readAnswer(t, conn); !strings.HasPrefix(got, "HTTP/1.1 200 ") || strings.Contains(got, "Connection: close") {
		t.Fatalf("got %q, want a kept-alive 200", got)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("read %d bytes, %v; want the connection closed", n, err)
	}
	if d := time.Since(start); d > testTimeout/2 {
		t.Errorf("closed after %v, want about 100ms", d)
	}
}

// A body shorter than its Content-Length, then the client leaves: the handler sees an error.
func TestRawTruncatedBody(t *testing.T) {
	got := make(chan string, 1)
	var m Mux
	m.Handle("POST", "/read", func(w *Response, r *Request) {
		_, err := io.ReadAll(r.Body)
		got <- fmt.Sprint(err)
	})
	_, addr := start(t, m.Serve, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "POST /read HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
	conn.(*net.TCPConn).CloseWrite()
	if e := <-got; !strings.Contains(e, "reading the request body: unexpected EOF") {
		t.Errorf("handler's read: got %q, want unexpected EOF", e)
	}
	conn.Close()
}

// A client waiting for 100 Continue on a handler that does not read the body gets the
// answer without the go-ahead, and the connection closes; one whose handler reads it gets
// 100 Continue first.
func TestRawExpectContinue(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	for _, tt := range []struct{ path, want string }{
		{"/hello", "HTTP/1.1 405 "},
		{"/echo", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"},
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		method := "POST"
		if tt.path == "/hello" {
			method = "PUT"
		}
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", method, tt.path)
		var got string
		if tt.path == "/echo" {
			conn.SetReadDeadline(time.Now().Add(testTimeout))
			b := make([]byte, 64)
			n, _ := io.ReadAtLeast(conn, b, len("HTTP/1.1 100 Continue\r\n\r\n"))
			got = string(b[:n])
			io.WriteString(conn, "body")
		}
		got += readAnswer(t, conn)
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: got %q, want %q...", tt.path, got, tt.want)
		}
		if tt.path == "/hello" && !strings.Contains(got, "Connection: close") {
			t.Errorf("%s: got %q, want the connection closed", tt.path, got)
		}
		if tt.path == "/echo" && !strings.HasSuffix(got, "4:body") {
			t.Errorf("%s: got %q, want the body echoed", tt.path, got)
		}
		conn.Close()
	}
}

// An HTTP/1.0 client gets a long body delimited by the connection's end, not chunked.
func TestRawHTTP10Stream(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /big HTTP/1.0\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(b), "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 200 OK") || strings.Contains(head, "Transfer-Encoding") ||
		strings.Contains(head, "Content-Length") || !strings.Contains(head, "Connection: close") || len(body) != 103000 {
		t.Errorf("got header %q and %d bytes, want a close-delimited body of 103000", head, len(body))
	}
}
