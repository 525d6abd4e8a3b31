package admin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestPprofGoTool fetches profiles over HTTP as the data-path benchmark does and reads them
// with the Go toolchain's own readers: what they accept is the contract.
func TestPprofGoTool(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH (%v): it reads the profiles", err)
	}
	s := New(loopbackConfig())
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	dir := t.TempDir()

	tests := []struct {
		path string
		args []string // go tool ... <file>
		want string   // in its output
	}{
		{"/debug/pprof/profile?seconds=1", []string{"pprof", "-top"}, "Type: cpu"},
		{"/debug/pprof/heap", []string{"pprof", "-top"}, "Type: inuse_space"},
		{"/debug/pprof/allocs", []string{"pprof", "-top"}, "Type: alloc_space"},
		{"/debug/pprof/goroutine", []string{"pprof", "-top"}, "Type: goroutine"},
		{"/debug/pprof/heap?debug=1", []string{"pprof", "-top"}, "Type: inuse_space"},
		{"/debug/pprof/trace?seconds=0.2", []string{"trace", "-d=parsed"}, ""},
	}
	for i, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body, err := get(t, s.AdminAddr(), tt.path)
			if err != nil || code != 200 {
				t.Fatalf("GET %s: got %d %v, want 200", tt.path, code, err)
			}
			file := filepath.Join(dir, strings.Repeat("p", i+1))
			if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), goToolTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, goTool, append(append([]string{"tool"}, tt.args...), file)...).CombinedOutput()
			if err != nil {
				t.Fatalf("go tool %s on %s: %v\n%s", strings.Join(tt.args, " "), tt.path, err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("go tool %s on %s: got %q, want it to contain %q", strings.Join(tt.args, " "), tt.path, out, tt.want)
			}
		})
	}
}

// goToolTimeout bounds one go tool command. pprof and trace are not shipped built: the go
// command builds them on first use, which on a cold build cache (a fresh CI machine, next to
// the -race builds of other packages) took longer than 10 s.
const goToolTimeout = 5 * time.Minute

func TestPprofHeaders(t *testing.T) {
	s := startLoopback(t, New(loopbackConfig()))
	for _, tt := range []struct {
		target, contentType, disposition string
	}{
		{"/debug/pprof/heap", "application/octet-stream", `attachment; filename="heap"`},
		{"/debug/pprof/heap?debug=1", "text/plain; charset=utf-8", ""},
		{"/debug/pprof/profile?seconds=0.05", "application/octet-stream", `attachment; filename="profile"`},
		{"/debug/pprof/", "text/plain; charset=utf-8", ""},
	} {
		resp, body := do(t, "GET", s.AdminAddr(), tt.target, nil)
		if resp.StatusCode != 200 {
			t.Errorf("%s: got status %d (%q), want 200", tt.target, resp.StatusCode, body)
		}
		if got := resp.Header.Get("Content-Type"); got != tt.contentType {
			t.Errorf("%s: got Content-Type %q, want %q", tt.target, got, tt.contentType)
		}
		if got := resp.Header.Get("Content-Disposition"); got != tt.disposition {
			t.Errorf("%s: got Content-Disposition %q, want %q", tt.target, got, tt.disposition)
		}
	}
}

// TestPprofCPUBusy: a second CPU profile at once is refused with a reason, not an empty file.
func TestPprofCPUBusy(t *testing.T) {
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Fatalf("starting the test's own CPU profile: %v", err)
	}
	defer pprof.StopCPUProfile()
	s := startLoopback(t, New(loopbackConfig()))
	resp, body := do(t, "GET", s.AdminAddr(), "/debug/pprof/profile?seconds=1", nil)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "another CPU profile") {
		t.Errorf("got %d %q, want 409 naming the other CPU profile", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Content-Disposition"); got != "" {
		t.Errorf("got Content-Disposition %q on an error, want none", got)
	}
}

// TestPprofClientGone: a profile ends when its client leaves, not when its seconds are up:
// the next one can start at once.
func TestPprofClientGone(t *testing.T) {
	s := startLoopback(t, New(loopbackConfig()))
	for _, target := range []string{"/debug/pprof/profile?seconds=3600", "/debug/pprof/trace?seconds=3600"} {
		conn, err := net.Dial("tcp", s.AdminAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", target)
		// The recording has started once a second one is refused.
		testutil.WaitFor(t, testTimeout, target+" to start", func() bool {
			resp, _ := do(t, "GET", s.AdminAddr(), strings.Replace(target, "3600", "0.01", 1), nil)
			return resp.StatusCode == http.StatusConflict
		})
		conn.Close()
		testutil.WaitFor(t, testTimeout, target+" to stop after its client left", func() bool {
			resp, _ := do(t, "GET", s.AdminAddr(), strings.Replace(target, "3600", "0.01", 1), nil)
			return resp.StatusCode == http.StatusOK
		})
	}
}

func TestPprofSymbol(t *testing.T) {
	pc := reflect.ValueOf(pprofIndex).Pointer()
	want := runtime.FuncForPC(pc).Name()
	s := startLoopback(t, New(loopbackConfig()))
	for _, method := range []string{"GET", "POST"} {
		addrs := fmt.Sprintf("%#x+0x1", pc)
		var resp *http.Response
		var body string
		if method == "GET" {
			resp, body = do(t, method, s.AdminAddr(), "/debug/pprof/symbol?"+addrs, nil)
		} else {
			resp, body = do(t, method, s.AdminAddr(), "/debug/pprof/symbol", bytes.NewBufferString(addrs))
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "num_symbols: 1\n") || !strings.Contains(body, " "+want+"\n") {
			t.Errorf("%s symbol %s: got %d %q, want 200 naming %s", method, addrs, resp.StatusCode, body, want)
		}
	}
}
