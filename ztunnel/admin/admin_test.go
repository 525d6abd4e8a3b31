package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/prom"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

const testTimeout = 10 * time.Second

func TestHandlers(t *testing.T) {
	var level slog.LevelVar
	var ready atomic.Pointer[error]
	s := New(Config{
		AdminAddr: "127.0.0.1:0", StatsAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0",
		Level: &level,
		Metrics: func(w io.Writer) error {
			_, err := io.WriteString(w, "istio_tcp_connections_opened_total 1\n")
			return err
		},
		Ready: func() error {
			if p := ready.Load(); p != nil {
				return *p
			}
			return nil
		},
	})
	s = startLoopback(t, s)
	s.Register(SectionWorkloads, DumperFunc(func() any { return []map[string]string{{"name": "reviews-v1", "namespace": "default"}} }))
	s.Register(SectionServices, DumperFunc(func() any { return []string{"reviews.default.svc.cluster.local"} }))
	notSynced := errors.New("xds not synced; zds not connected")

	tests := []struct {
		name       string
		addr       func() net.Addr
		method     string
		target     string
		before     func()
		wantStatus int
		wantBody   string // substring
		wantLevel  slog.Level
	}{
		{name: "index", addr: s.AdminAddr, target: "/", wantStatus: 200, wantBody: "/config_dump"},
		{name: "config dump", addr: s.AdminAddr, target: "/config_dump", wantStatus: 200, wantBody: `"workloads": [`},
		{name: "config dump section", addr: s.AdminAddr, target: "/config_dump?section=services", wantStatus: 200, wantBody: `"reviews.default.svc.cluster.local"`},
		{name: "config dump unknown section", addr: s.AdminAddr, target: "/config_dump?section=nope", wantStatus: 404, wantBody: "sections are services, workloads"},
		{name: "logging read", addr: s.AdminAddr, target: "/logging", wantStatus: 200, wantBody: `{"level": "info"}`},
		{name: "logging debug", addr: s.AdminAddr, target: "/logging?level=debug", wantStatus: 200, wantBody: `"debug"`, wantLevel: slog.LevelDebug},
		{name: "logging post warning", addr: s.AdminAddr, method: "POST", target: "/logging?level=warning", wantStatus: 200, wantBody: `"warn"`, wantLevel: slog.LevelWarn},
		{name: "logging upper case", addr: s.AdminAddr, method: "PUT", target: "/logging?level=ERROR", wantStatus: 200, wantBody: `"error"`, wantLevel: slog.LevelError},
		{name: "logging bad level", addr: s.AdminAddr, target: "/logging?level=loud", before: func() { level.Set(slog.LevelInfo) }, wantStatus: 400, wantBody: `level "loud"`},
		{name: "logging delete", addr: s.AdminAddr, method: "DELETE", target: "/logging", wantStatus: 405},
		{name: "pprof index", addr: s.AdminAddr, target: "/debug/pprof/", wantStatus: 200, wantBody: "goroutine"},
		{name: "pprof index lists the CPU profile", addr: s.AdminAddr, target: "/debug/pprof/", wantStatus: 200, wantBody: "profile?seconds=N"},
		{name: "pprof goroutine", addr: s.AdminAddr, target: "/debug/pprof/goroutine?debug=1", wantStatus: 200, wantBody: "goroutine profile"},
		{name: "pprof goroutine stacks", addr: s.AdminAddr, target: "/debug/pprof/goroutine?debug=2", wantStatus: 200, wantBody: "goroutine "},
		{name: "pprof heap text", addr: s.AdminAddr, target: "/debug/pprof/heap?debug=1&gc=1", wantStatus: 200, wantBody: "# HeapInuse = "},
		{name: "pprof allocs text", addr: s.AdminAddr, target: "/debug/pprof/allocs?debug=1", wantStatus: 200, wantBody: "heap profile"},
		{name: "pprof threadcreate text", addr: s.AdminAddr, target: "/debug/pprof/threadcreate?debug=1", wantStatus: 200, wantBody: "threadcreate profile"},
		{name: "pprof block text", addr: s.AdminAddr, target: "/debug/pprof/block?debug=1", wantStatus: 200, wantBody: "--- contention"},
		{name: "pprof mutex text", addr: s.AdminAddr, target: "/debug/pprof/mutex?debug=1", wantStatus: 200, wantBody: "--- mutex"},
		{name: "pprof cmdline", addr: s.AdminAddr, target: "/debug/pprof/cmdline", wantStatus: 200, wantBody: os.Args[0]},
		{name: "pprof symbol", addr: s.AdminAddr, target: "/debug/pprof/symbol", wantStatus: 200, wantBody: "num_symbols: 1"},
		{name: "pprof unknown profile", addr: s.AdminAddr, target: "/debug/pprof/nope", wantStatus: 404, wantBody: `no profile "nope"; profiles are allocs, block, goroutine, heap`},
		{name: "pprof bad seconds", addr: s.AdminAddr, target: "/debug/pprof/profile?seconds=abc", wantStatus: 400, wantBody: `profile: seconds "abc"`},
		{name: "pprof zero seconds", addr: s.AdminAddr, target: "/debug/pprof/profile?seconds=0", wantStatus: 400, wantBody: `seconds "0"`},
		{name: "pprof bad trace seconds", addr: s.AdminAddr, target: "/debug/pprof/trace?seconds=-1", wantStatus: 400, wantBody: `trace: seconds "-1"`},
		{name: "pprof bad debug", addr: s.AdminAddr, target: "/debug/pprof/heap?debug=x", wantStatus: 400, wantBody: `debug "x"`},
		{name: "pprof bad gc", addr: s.AdminAddr, target: "/debug/pprof/heap?gc=yes", wantStatus: 400, wantBody: `gc "yes"`},
		{name: "pprof delta profile", addr: s.AdminAddr, target: "/debug/pprof/heap?seconds=5", wantStatus: 400, wantBody: "heap?seconds=5: delta profiles are not served"},
		{name: "pprof bad symbol address", addr: s.AdminAddr, target: "/debug/pprof/symbol?0x1+pc", wantStatus: 400, wantBody: `address "pc"`},
		{name: "pprof post profile", addr: s.AdminAddr, method: "POST", target: "/debug/pprof/heap", wantStatus: 405},
		{name: "admin unknown", addr: s.AdminAddr, target: "/quitquitquit", wantStatus: 404},
		{name: "stats prometheus", addr: s.StatsAddr, target: "/stats/prometheus", wantStatus: 200, wantBody: "istio_tcp_connections_opened_total"},
		{name: "metrics", addr: s.StatsAddr, target: "/metrics", wantStatus: 200, wantBody: "istio_tcp_connections_opened_total"},
		{name: "ready", addr: s.ReadyAddr, target: "/healthz/ready", wantStatus: 200, wantBody: "ready"},
		{name: "not ready", addr: s.ReadyAddr, target: "/healthz/ready", before: func() { ready.Store(&notSynced) }, wantStatus: 503, wantBody: "not ready: xds not synced; zds not connected"},
		{name: "ready again", addr: s.ReadyAddr, target: "/healthz/ready", before: func() { ready.Store(nil) }, wantStatus: 200},
		{name: "ready port has nothing else", addr: s.ReadyAddr, target: "/config_dump", wantStatus: 404},
		{name: "ready head", addr: s.ReadyAddr, method: "HEAD", target: "/healthz/ready", wantStatus: 200},
		{name: "ready post", addr: s.ReadyAddr, method: "POST", target: "/healthz/ready", wantStatus: 405},
		{name: "stats post", addr: s.StatsAddr, method: "POST", target: "/metrics", wantStatus: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			method := tt.method
			if method == "" {
				method = "GET"
			}
			resp, body := do(t, method, tt.addr(), tt.target, nil)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status: got %d, want %d (body %q)", resp.StatusCode, tt.wantStatus, body)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("body: got %q, want it to contain %q", body, tt.wantBody)
			}
			if tt.wantLevel != 0 && level.Level() != tt.wantLevel {
				t.Errorf("level: got %v, want %v", level.Level(), tt.wantLevel)
			}
		})
	}
}

func TestConfigDumpJSON(t *testing.T) {
	s := startLoopback(t, New(loopbackConfig()))
	s.Register(SectionPolicies, DumperFunc(func() any { return []string{"default/allow-reviews"} }))
	s.Register(SectionCertificates, DumperFunc(func() any { return map[string]any{"identity": "spiffe://cluster.local/ns/default/sa/reviews"} }))
	s.Register(SectionPolicies, DumperFunc(func() any { return []string{"default/deny-all"} })) // replaces
	resp, body := do(t, "GET", s.AdminAddr(), "/config_dump", nil)
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("content type: got %q, want application/json", got)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if p, _ := got[SectionPolicies].([]any); len(p) != 1 || p[0] != "default/deny-all" {
		t.Errorf("policies: got %v, want [default/deny-all]", got[SectionPolicies])
	}
	if _, ok := got[SectionCertificates]; !ok {
		t.Errorf("certificates: missing from %v", got)
	}

	s.Register("broken", DumperFunc(func() any { return func() {} }))
	if resp, _ := do(t, "GET", s.AdminAddr(), "/config_dump", nil); resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("unencodable dump: got status %d, want 500", resp.StatusCode)
	}
}

// startLoopback starts s, made with loopbackConfig, until the test ends.
func startLoopback(t *testing.T, s *Server) *Server {
	t.Helper()
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s
}

// do sends one request with net/http's client and returns the answer with its body read.
func do(t *testing.T, method string, addr net.Addr, target string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr.String()+target, body)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: testTimeout}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, target, err)
	}
	return resp, string(b)
}

func get(t *testing.T, addr net.Addr, path string) (int, string, error) {
	t.Helper()
	c := &http.Client{Timeout: testTimeout}
	resp, err := c.Get("http://" + addr.String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func loopbackConfig() Config {
	return Config{AdminAddr: "127.0.0.1:0", StatsAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0",
		Metrics: func(w io.Writer) error {
			_, err := io.WriteString(w, "up 1\n")
			return err
		}}
}

// What ztunnel's metrics serve on both paths parses with Prometheus's own parser, with the
// text format's media type.
func TestMetricsParse(t *testing.T) {
	m := metrics.New()
	cfg := loopbackConfig()
	cfg.Metrics = m.WriteText
	s := startLoopback(t, New(cfg))
	for _, path := range []string{"/stats/prometheus", "/metrics"} {
		resp, body := do(t, "GET", s.StatsAddr(), path, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != prom.ContentType {
			t.Errorf("%s: got %d %q, want 200 %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), prom.ContentType)
		}
		mfs := testutil.ParseMetrics(t, strings.NewReader(body))
		if mfs["go_goroutines"] == nil || mfs["process_resident_memory_bytes"] == nil {
			t.Errorf("%s: got families %d, want the Go and process families among them", path, len(mfs))
		}
	}
}

// Without a metrics writer the stats port answers 404.
func TestNoMetrics(t *testing.T) {
	cfg := loopbackConfig()
	cfg.Metrics = nil
	s := startLoopback(t, New(cfg))
	if resp, _ := do(t, "GET", s.StatsAddr(), "/metrics", nil); resp.StatusCode != 404 {
		t.Errorf("got %d, want 404", resp.StatusCode)
	}
}

// A metrics writer that fails gives a 500 naming the error, not a truncated exposition.
func TestMetricsError(t *testing.T) {
	cfg := loopbackConfig()
	cfg.Metrics = func(w io.Writer) error {
		io.WriteString(w, "up 1\n")
		return errors.New("collector broke")
	}
	s := startLoopback(t, New(cfg))
	if resp, body := do(t, "GET", s.StatsAddr(), "/metrics", nil); resp.StatusCode != 500 || body != "writing metrics: collector broke\n" {
		t.Errorf("got %d %q, want 500 naming the error", resp.StatusCode, body)
	}
}

func TestStartStop(t *testing.T) {
	before := runtime.NumGoroutine()
	s := New(loopbackConfig())
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: got %v, want ErrStarted", err)
	}
	addrs := []struct {
		addr net.Addr
		path string
		want string
	}{
		{s.AdminAddr(), "/logging", "info"},
		{s.StatsAddr(), "/stats/prometheus", "up 1"},
		{s.ReadyAddr(), "/healthz/ready", "ready"},
	}
	for _, a := range addrs {
		code, body, err := get(t, a.addr, a.path)
		if err != nil || code != 200 || !strings.Contains(body, a.want) {
			t.Errorf("GET %s%s: got %d %q %v, want 200 with %q", a.addr, a.path, code, body, err, a.want)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	if err := s.Stop(sctx); err != nil {
		t.Errorf("Stop: got %v, want nil", err)
	}
	for _, a := range addrs {
		if _, _, err := get(t, a.addr, a.path); err == nil {
			t.Errorf("GET %s%s after Stop: got an answer, want connection refused", a.addr, a.path)
		}
	}
	if s.AdminAddr() != nil {
		t.Errorf("AdminAddr after Stop: got %v, want nil", s.AdminAddr())
	}
	http.DefaultClient.CloseIdleConnections()
	testutil.WaitGoroutines(t, before, testTimeout)

	// A stopped server starts again.
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if err := s.Stop(sctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

func TestStartBindFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := loopbackConfig()
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.ReadyAddr = taken.Addr().String()
	s := New(cfg)
	if err := s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "readiness") {
		t.Fatalf("Start with a taken port: got %v, want an error naming the readiness server", err)
	}
	if s.AdminAddr() != nil {
		t.Errorf("AdminAddr after a failed Start: got %v, want nil", s.AdminAddr())
	}
	// Nothing stays bound: the same config with a free port starts.
	taken.Close()
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start once the port is free: %v", err)
	}
	s.Stop(context.Background())
}

func TestDisabled(t *testing.T) {
	cfg := loopbackConfig()
	cfg.StatsAddr = "-"
	s := New(cfg)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	if s.StatsAddr() != nil || s.AdminAddr() == nil || s.ReadyAddr() == nil {
		t.Errorf("addrs: got admin %v stats %v ready %v, want stats nil, others bound", s.AdminAddr(), s.StatsAddr(), s.ReadyAddr())
	}
}

func TestStopDrains(t *testing.T) {
	s := New(loopbackConfig())
	entered, release := make(chan struct{}), make(chan struct{})
	s.Register("slow", DumperFunc(func() any {
		close(entered)
		<-release
		return "done"
	}))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code int
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		code, body, err := get(t, s.AdminAddr(), "/config_dump?section=slow")
		got <- result{code, body, err}
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		stopped <- s.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond): // a bounded check that Stop is still waiting
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Errorf("Stop: got %v, want nil", err)
	}
	r := <-got
	if r.err != nil || r.code != 200 || !strings.Contains(r.body, `"done"`) {
		t.Errorf("in-flight request: got %d %q %v, want 200 \"done\"", r.code, r.body, r.err)
	}
}

func TestStopDeadline(t *testing.T) {
	s := New(loopbackConfig())
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	s.Register("stuck", DumperFunc(func() any {
		close(entered)
		<-release
		return nil
	}))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	go get(t, s.AdminAddr(), "/config_dump?section=stuck")
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop past its deadline: got %v, want DeadlineExceeded", err)
	}
}

func TestRun(t *testing.T) {
	s := New(loopbackConfig())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, testTimeout) }()
	deadline := time.Now().Add(testTimeout)
	for s.ReadyAddr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Run did not start the servers")
		}
		runtime.Gosched()
	}
	if code, _, err := get(t, s.ReadyAddr(), "/healthz/ready"); err != nil || code != 200 {
		t.Errorf("ready: got %d %v, want 200", code, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}
