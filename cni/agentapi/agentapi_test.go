package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/after"
)

// start runs s on a fresh socket and returns the socket's path, what ends Serve's context,
// and where Serve's result arrives.
func start(t testing.TB, s *Server) (sock string, stop context.CancelFunc, served <-chan error) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- s.Serve(ctx, ln) }()
	return sock, stop, result
}

// serve runs s on a fresh socket until the test ends and returns the socket's path.
func serve(t testing.TB, s *Server) string {
	t.Helper()
	sock, stop, served := start(t, s)
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The plugin gets its answer while the work the agent left for after the reply still runs;
// that work runs once, after the answer.
func TestAfterReplyRunsAfterTheAnswer(t *testing.T) {
	release, ran := make(chan struct{}), make(chan string, 2)
	sock := serve(t, &Server{Handle: func(ctx context.Context, op Op, req PodRequest) (bool, error) {
		after.Reply(ctx, func() {
			<-release
			ran <- req.PodName
		})
		return true, nil
	}})
	ctx := testContext(t)
	resp, err := NewClient(sock, 10*time.Second).Call(ctx, OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
	if err != nil {
		t.Fatalf("Call while the after-reply work is blocked: %v", err)
	}
	if !resp.Enrolled {
		t.Errorf("got %+v, want enrolled", resp)
	}
	select {
	case p := <-ran:
		t.Fatalf("after-reply work for %s ran before it was released", p)
	default:
	}
	close(release)
	select {
	case p := <-ran:
		if p != "web" {
			t.Errorf("after-reply work ran for %q, want web", p)
		}
	case <-ctx.Done():
		t.Fatal("the after-reply work never ran")
	}
}

// serveAfterReply serves calls that enrol and leave work for after the reply, which signals
// ran, with the given HangupWait.
func serveAfterReply(t *testing.T, wait time.Duration) (sock string, ran <-chan struct{}) {
	done := make(chan struct{}, 1)
	sock = serve(t, &Server{HangupWait: wait, Handle: func(ctx context.Context, op Op, req PodRequest) (bool, error) {
		after.Reply(ctx, func() { done <- struct{}{} })
		return true, nil
	}})
	return sock, done
}

// notRan fails if the after-reply work runs within 200 ms.
func notRan(t *testing.T, ran <-chan struct{}, while string) {
	t.Helper()
	select {
	case <-ran:
		t.Fatal("the after-reply work ran " + while)
	case <-time.After(200 * time.Millisecond):
	}
}

// waitRan fails if the after-reply work has not run when ctx ends.
func waitRan(ctx context.Context, t *testing.T, ran <-chan struct{}) {
	t.Helper()
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("the after-reply work never ran")
	}
}

// The work left for after the reply waits until the plugin hangs up, and runs anyway once
// HangupWait has passed if it never does.
func TestAfterReplyWaitsForHangup(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wait   time.Duration
		hangUp bool
	}{
		{"plugin hangs up", time.Minute, true},
		{"plugin keeps the connection", 20 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, ran := serveAfterReply(t, tc.wait)
			ctx := testContext(t)
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte(`{"op":"add","podNamespace":"demo","podName":"web"}` + "\n")); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || !strings.Contains(line, `"enrolled":true`) {
				t.Fatalf("answer %q, %v; want enrolled", line, err)
			}
			if tc.hangUp {
				notRan(t, ran, "while the plugin still held the connection")
				conn.Close()
			}
			waitRan(ctx, t, ran)
		})
	}
}

// The work left for after the reply waits until the plugin's process has exited, not only
// hung up (the container runtime waits for the exit), and runs anyway once HangupWait has
// passed if it lives on.
func TestAfterReplyWaitsForThePluginsExit(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait time.Duration
		exit bool
	}{
		{"plugin exits", time.Minute, true},
		{"plugin lives on", 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, ran := serveAfterReply(t, tc.wait)
			ctx := testContext(t)
			plugin := exec.CommandContext(ctx, os.Args[0])
			plugin.Env = append(os.Environ(), pluginEnv+"="+sock)
			plugin.Stderr = os.Stderr
			stdin, err := plugin.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := plugin.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := plugin.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				stdin.Close()
				plugin.Wait()
			}()
			if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "answered\n" {
				t.Fatalf("plugin process said %q, %v; want answered", line, err)
			}
			if tc.exit {
				notRan(t, ran, "while the plugin process still ran")
				stdin.Close()
			}
			waitRan(ctx, t, ran)
		})
	}
}

// The request reaches the handler whole, and each answer reaches the client.
func TestCall(t *testing.T) {
	var got []string
	sock := serve(t, &Server{Handle: func(_ context.Context, op Op, req PodRequest) (bool, error) {
		b, _ := json.Marshal(req)
		got = append(got, string(op)+" "+string(b))
		if req.PodName == "late" {
			return false, errors.New("ztunnel not connected on node n1")
		}
		return op == OpAdd, nil
	}})
	c := NewClient(sock, 10*time.Second)
	ctx := testContext(t)
	req := PodRequest{ContainerID: "abc", Netns: "/var/run/netns/x", IfName: "eth0", PodNamespace: "demo", PodName: "web"}
	for _, tc := range []struct {
		op       Op
		name     string
		enrolled bool
		err      string
	}{
		{OpAdd, "web", true, ""},
		{OpCheck, "web", false, ""},
		{OpDel, "web", false, ""},
		{OpAdd, "late", false, "ztunnel not connected on node n1"},
	} {
		req.PodName = tc.name
		r, err := c.Call(ctx, tc.op, req)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%s %s: got %+v, %v; want error %q", tc.op, tc.name, r, err, tc.err)
			}
			continue
		}
		if err != nil || r.Enrolled != tc.enrolled {
			t.Errorf("%s %s: got %+v, %v; want enrolled %v", tc.op, tc.name, r, err, tc.enrolled)
		}
	}
	want := `add {"containerID":"abc","netns":"/var/run/netns/x","ifName":"eth0","podNamespace":"demo","podName":"web"}`
	if len(got) != 4 || got[0] != want {
		t.Errorf("handler got %q, want 4 calls, the first %q", got, want)
	}
}

func TestCallErrors(t *testing.T) {
	ctx := testContext(t)
	missing := filepath.Join(t.TempDir(), "none.sock")
	_, err := NewClient(missing, time.Second).Call(ctx, OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Call without an agent: %v; want ErrUnreachable naming %s", err, missing)
	}

	// An agent that accepts and closes without answering.
	sock := filepath.Join(t.TempDir(), "closing.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadSlice('\n')
			c.Close()
		}
	}()
	_, err = NewClient(sock, time.Second).Call(ctx, OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
	if err == nil || !strings.Contains(err.Error(), "demo/web") || !errors.Is(err, io.EOF) {
		t.Errorf("Call to an agent closing without an answer: %v; want an error naming the pod and EOF", err)
	}

	sock = serve(t, &Server{Handle: func(context.Context, Op, PodRequest) (bool, error) { return true, nil }})
	_, err = NewClient(sock, time.Second).Call(ctx, "undo", PodRequest{PodNamespace: "demo", PodName: "web"})
	if err == nil || !strings.Contains(err.Error(), `unknown operation "undo"`) {
		t.Errorf("Call with an unknown operation: %v; want the agent to name it", err)
	}
}

// When the plugin goes away (its own timeout), the handler's context ends.
func TestPluginGoneCancelsTheCall(t *testing.T) {
	ended := make(chan error, 1)
	sock := serve(t, &Server{Handle: func(ctx context.Context, _ Op, _ PodRequest) (bool, error) {
		<-ctx.Done()
		ended <- ctx.Err()
		return false, ctx.Err()
	}})
	_, err := NewClient(sock, 50*time.Millisecond).Call(context.Background(), OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Call past its timeout: %v; want context.DeadlineExceeded", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler's context ended with %v, want context.Canceled", err)
		}
	case <-testContext(t).Done():
		t.Fatal("the handler's context did not end after the plugin went away")
	}
}

// A call in flight when Serve's context ends still gets its answer, and Serve returns after.
func TestServeDrains(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s := &Server{Handle: func(context.Context, Op, PodRequest) (bool, error) {
		close(started)
		<-release
		return true, nil
	}}
	sock, stop, served := start(t, s)
	answered := make(chan error, 1)
	go func() {
		_, err := NewClient(sock, 10*time.Second).Call(context.Background(), OpAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
		answered <- err
	}()
	<-started
	stop()
	select {
	case err := <-served:
		t.Fatalf("Serve returned with a call in flight: %v", err)
	default:
	}
	close(release)
	if err := <-answered; err != nil {
		t.Errorf("call in flight during the stop: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := NewClient(sock, time.Second).Call(context.Background(), OpAdd, PodRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Call after Serve returned: %v; want ErrUnreachable", err)
	}
}

// A plugin of the HTTP version of the API, left on the node by an older agent, gets an
// error it shows, not a malformed answer.
func TestOldHTTPPlugin(t *testing.T) {
	sock := serve(t, &Server{Handle: func(context.Context, Op, PodRequest) (bool, error) { return true, nil }})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Post("http://cni-agent/v1/cni/add", "application/json", strings.NewReader(`{"podNamespace":"demo","podName":"web"}`))
	if err != nil {
		t.Fatalf("HTTP call: %v", err)
	}
	defer resp.Body.Close()
	var r Response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("decoding the answer to an HTTP call: %v", err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(r.Error, "older than its cni-agent") {
		t.Errorf("HTTP call got %s %+v; want 503 with an error about the plugin's version", resp.Status, r)
	}
}

func TestReadMessage(t *testing.T) {
	long := bytes.Repeat([]byte("x"), maxMessage)
	for _, tc := range []struct {
		in      string
		want    string
		wantErr error
	}{
		{in: "{}\n", want: "{}\n"},
		{in: "{}\nmore", want: "{}\n"},
		{in: "", wantErr: io.EOF},
		{in: "{}", wantErr: io.ErrUnexpectedEOF},
		{in: string(long) + "\n", wantErr: errTooLong},
	} {
		got, err := readMessage(bufio.NewReaderSize(strings.NewReader(tc.in), 16))
		if string(got) != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("readMessage(%.20q) = %.20q, %v; want %q, %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func FuzzReadMessage(f *testing.F) {
	f.Add([]byte(`{"op":"add","podName":"web"}` + "\n"))
	f.Add([]byte("POST /v1/cni/add HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readMessage(bufio.NewReaderSize(bytes.NewReader(in), 16))
		if err != nil {
			return
		}
		if i := bytes.IndexByte(got, '\n'); i != len(got)-1 || !bytes.HasPrefix(in, got) {
			t.Errorf("readMessage(%q) = %q: want in's first line with its newline", in, got)
		}
	})
}

// BenchmarkCall times one call from the plugin's client to an agent answering at once:
//
//	go test -run '^$' -bench BenchmarkCall ./cni/agentapi
func BenchmarkCall(b *testing.B) {
	sock := serve(b, &Server{Handle: func(context.Context, Op, PodRequest) (bool, error) { return true, nil }})
	c := NewClient(sock, 10*time.Second)
	req := PodRequest{ContainerID: "abc", Netns: "/var/run/netns/cni-1", IfName: "eth0", PodNamespace: "demo", PodName: "web-0", PodUID: "uid-1"}
	for b.Loop() {
		if _, err := c.Call(context.Background(), OpAdd, req); err != nil {
			b.Fatal(err)
		}
	}
}
