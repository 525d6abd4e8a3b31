package httpserve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

const testTimeout = 10 * time.Second

func TestMain(m *testing.M) { os.Exit(testutil.CheckMain(m, testTimeout)) }

// start serves h on a loopback port until the test ends.
func start(t *testing.T, h Handler, cfg Config) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(h, cfg)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: got %v, want ErrServerClosed", err)
		}
	})
	return s, ln.Addr().String()
}

// client returns a net/http client whose idle connections close when the test ends.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: testTimeout}
}

func testMux() *Mux {
	var m Mux
	m.Handle("GET", "/hello", func(w *Response, r *Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello %s from %s", r.Query().Get("name"), r.Method)
	})
	m.Handle("POST", "/echo", func(w *Response, r *Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			Error(w, err.Error(), StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d:%s", len(b), b)
	})
	m.Handle("GET", "/big", func(w *Response, r *Request) {
		n := 100 << 10
		for i := 0; i < n; i += 1000 {
			w.Write(bytes.Repeat([]byte{'a' + byte(i/1000%26)}, 1000))
		}
	})
	m.Handle("GET", "/status", func(w *Response, r *Request) {
		Error(w, "teapot-ish", StatusConflict)
	})
	m.Handle("GET", "/nobody", func(w *Response, r *Request) { w.WriteHeader(StatusNoContent) })
	m.Handle("GET", "/files/*", func(w *Response, r *Request) { fmt.Fprint(w, "file ", strings.TrimPrefix(r.Path, "/files/")) })
	m.Handle("GET", "/files/special", func(w *Response, r *Request) { fmt.Fprint(w, "special") })
	m.Handle("GET", "/panic", func(w *Response, r *Request) { panic("handler bug") })
	return &m
}

func TestNetHTTPClient(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	c := client(t)
	base := "http://" + addr
	tests := []struct {
		method, path, body string
		wantStatus         int
		wantBody           string
		wantHeader         map[string]string
	}{
		{"GET", "/hello?name=w%C3%B6rld", "", 200, "hello wörld from GET", map[string]string{"Content-Type": "text/plain", "Content-Length": "21"}},
		{"HEAD", "/hello", "", 200, "", map[string]string{"Content-Length": "16"}},
		{"POST", "/echo", "some body", 200, "9:some body", nil},
		{"POST", "/echo", "", 200, "0:", nil},
		{"GET", "/status", "", 409, "teapot-ish\n", map[string]string{"Content-Type": "text/plain; charset=utf-8"}},
		{"GET", "/nobody", "", 204, "", nil},
		{"GET", "/files/a/b", "", 200, "file a/b", nil},
		{"GET", "/files/special", "", 200, "special", nil},
		{"GET", "/files/a%20b%2Fc", "", 200, "file a b/c", nil},
		{"HEAD", "/big", "", 200, "", map[string]string{"Content-Length": ""}},
		{"GET", "/files/", "", 404, "/files/: no such endpoint\n", nil},
		{"GET", "/nope", "", 404, "/nope: no such endpoint\n", nil},
		{"DELETE", "/hello", "", 405, "/hello: method DELETE not allowed; use GET or HEAD\n", map[string]string{"Allow": "GET, HEAD"}},
		{"GET", "/echo", "", 405, "", map[string]string{"Allow": "POST"}},
		{"GET", "/panic", "", 500, "internal error\n", nil},
		{"GET", "/hello?name=again", "", 200, "hello again from GET", nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			var body io.Reader
			if tt.method == "POST" {
				body = strings.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, base+tt.path, body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantStatus || (tt.wantBody != "" && string(b) != tt.wantBody) {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, b, tt.wantStatus, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: got %q, want %q", k, got, v)
				}
			}
			if resp.Header.Get("Date") == "" {
				t.Errorf("no Date field")
			}
		})
	}
}

// A body past the buffer streams chunked, and arrives whole.
func TestStreamedBody(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	resp, err := client(t).Get("http://" + addr + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 103000 || b[0] != 'a' || b[1000] != 'b' || b[102999] != 'y' {
		t.Errorf("got %d bytes starting %q, want 103000 of a, b, c, ...", len(b), b[:min(len(b), 2)])
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("transfer encoding: got %v, want chunked", resp.TransferEncoding)
	}
}

// Requests on one kept-alive connection reuse it.
func TestKeepAlive(t *testing.T) {
	var m Mux
	m.Handle("GET", "/", func(w *Response, r *Request) { fmt.Fprint(w, r.RemoteAddr) })
	_, addr := start(t, m.Serve, Config{})
	c := client(t)
	var first string
	for i := range 3 {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if i == 0 {
			first = string(b)
		} else if string(b) != first {
			t.Errorf("request %d came from %s, want the first connection's %s", i, b, first)
		}
	}
}

// A client that sends Expect: 100-continue gets its go-ahead and is answered.
func TestExpectContinue(t *testing.T) {
	_, addr := start(t, testMux().Serve, Config{})
	tr := &http.Transport{ExpectContinueTimeout: testTimeout}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", strings.NewReader("continued"))
	req.Header.Set("Expect", "100-continue")
	resp, err := (&http.Client{Transport: tr, Timeout: testTimeout}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "9:continued" {
		t.Errorf("got %q, want 9:continued", b)
	}
}

// A request's context ends when its client goes away.
func TestClientGone(t *testing.T) {
	ended := make(chan error, 1)
	entered := make(chan struct{})
	var m Mux
	m.Handle("GET", "/wait", func(w *Response, r *Request) {
		close(entered)
		select {
		case <-r.Context().Done():
			ended <- nil
		case <-time.After(testTimeout):
			ended <- errors.New("context still alive after its client left")
		}
	})
	_, addr := start(t, m.Serve, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/wait", nil)
	go func() {
		<-entered
		cancel()
	}()
	if _, err := client(t).Do(req); err == nil {
		t.Fatal("the cancelled request got an answer")
	}
	if err := <-ended; err != nil {
		t.Error(err)
	}
}

// Shutdown waits for the request in progress, which gets its answer, and closes idle
// connections at once.
func TestShutdownDrains(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var m Mux
	m.Handle("GET", "/slow", func(w *Response, r *Request) {
		close(entered)
		<-release
		fmt.Fprint(w, "done")
	})
	m.Handle("GET", "/fast", func(w *Response, r *Request) { fmt.Fprint(w, "fast") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(m.Serve, Config{})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	addr := ln.Addr().String()
	c := client(t)

	// An idle kept-alive connection.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprint(idle, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := readAnswer(t, idle); !strings.HasSuffix(got, "fast") {
		t.Fatalf("fast: got %q", got)
	}

	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + addr + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- fmt.Sprintf("%d %s close=%v", resp.StatusCode, b, resp.Close)
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		stopped <- s.Shutdown(ctx)
	}()
	// The idle connection is closed without an answer.
	idle.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("idle connection: got %d bytes, %v; want it closed", n, err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned %v with a request in progress", err)
	default:
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if g := <-got; g != "200 done close=true" {
		t.Errorf("request in progress: got %q, want 200 done close", g)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: got %v, want ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Errorf("dialling after Shutdown: connected, want refused")
	}
}

// Shutdown past its deadline closes what is left, ends the contexts, and says so.
func TestShutdownDeadline(t *testing.T) {
	entered, ended := make(chan struct{}), make(chan struct{})
	var m Mux
	m.Handle("GET", "/stuck", func(w *Response, r *Request) {
		close(entered)
		<-r.Context().Done()
		close(ended)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(m.Serve, Config{})
	go s.Serve(ln)
	answered := make(chan error, 1)
	go func() {
		_, err := client(t).Get("http://" + ln.Addr().String() + "/stuck")
		answered <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: got %v, want DeadlineExceeded", err)
	}
	<-ended
	if err := <-answered; err == nil {
		t.Errorf("the stuck request got an answer, want its connection closed")
	}
}

// Serve after Shutdown refuses at once.
func TestServeAfterShutdown(t *testing.T) {
	s := New(testMux().Serve, Config{})
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: got %v, want ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Errorf("the listener is still open")
	}
}

// Many clients at once, some of them garbage: every good one is answered.
func TestConcurrentClients(t *testing.T) {
	var n atomic.Int64
	var m Mux
	m.Handle("GET", "/n", func(w *Response, r *Request) { fmt.Fprint(w, n.Add(1)) })
	_, addr := start(t, m.Serve, Config{})
	c := client(t)
	errs := make(chan error, 40)
	for i := range 40 {
		go func() {
			if i%4 == 0 {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close()
				fmt.Fprint(conn, "\x00\x01garbage\r\n\r\n")
				if got := readAnswer(t, conn); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
					errs <- fmt.Errorf("garbage: got %q, want 400", got)
					return
				}
				errs <- nil
				return
			}
			resp, err := c.Get("http://" + addr + "/n")
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			errs <- err
		}()
	}
	for range 40 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n.Load() != 30 {
		t.Errorf("handled %d requests, want 30", n.Load())
	}
}
