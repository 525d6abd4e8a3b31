package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

const testTimeout = 10 * time.Second

func TestHandlers(t *testing.T) {
	var level slog.LevelVar
	var ready atomic.Pointer[error]
	s := New(Config{
		Level: &level,
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "istio_tcp_connections_opened_total 1\n")
		}),
		Ready: func() error {
			if p := ready.Load(); p != nil {
				return *p
			}
			return nil
		},
	})
	s.Register(SectionWorkloads, DumperFunc(func() any { return []map[string]string{{"name": "reviews-v1", "namespace": "default"}} }))
	s.Register(SectionServices, DumperFunc(func() any { return []string{"reviews.default.svc.cluster.local"} }))
	notSynced := errors.New("xds not synced; zds not connected")

	tests := []struct {
		name       string
		handler    http.Handler
		method     string
		target     string
		before     func()
		wantStatus int
		wantBody   string // substring
		wantLevel  slog.Level
	}{
		{name: "index", handler: s.AdminHandler(), target: "/", wantStatus: 200, wantBody: "/config_dump"},
		{name: "config dump", handler: s.AdminHandler(), target: "/config_dump", wantStatus: 200, wantBody: `"workloads": [`},
		{name: "config dump section", handler: s.AdminHandler(), target: "/config_dump?section=services", wantStatus: 200, wantBody: `"reviews.default.svc.cluster.local"`},
		{name: "config dump unknown section", handler: s.AdminHandler(), target: "/config_dump?section=nope", wantStatus: 404, wantBody: "sections are services, workloads"},
		{name: "logging read", handler: s.AdminHandler(), target: "/logging", wantStatus: 200, wantBody: `{"level": "info"}`},
		{name: "logging debug", handler: s.AdminHandler(), target: "/logging?level=debug", wantStatus: 200, wantBody: `"debug"`, wantLevel: slog.LevelDebug},
		{name: "logging post warning", handler: s.AdminHandler(), method: "POST", target: "/logging?level=warning", wantStatus: 200, wantBody: `"warn"`, wantLevel: slog.LevelWarn},
		{name: "logging upper case", handler: s.AdminHandler(), method: "PUT", target: "/logging?level=ERROR", wantStatus: 200, wantBody: `"error"`, wantLevel: slog.LevelError},
		{name: "logging bad level", handler: s.AdminHandler(), target: "/logging?level=loud", before: func() { level.Set(slog.LevelInfo) }, wantStatus: 400, wantBody: `level "loud"`},
		{name: "logging delete", handler: s.AdminHandler(), method: "DELETE", target: "/logging", wantStatus: 405},
		{name: "pprof index", handler: s.AdminHandler(), target: "/debug/pprof/", wantStatus: 200, wantBody: "goroutine"},
		{name: "pprof index lists the CPU profile", handler: s.AdminHandler(), target: "/debug/pprof/", wantStatus: 200, wantBody: "profile?seconds=N"},
		{name: "pprof goroutine", handler: s.AdminHandler(), target: "/debug/pprof/goroutine?debug=1", wantStatus: 200, wantBody: "goroutine profile"},
		{name: "pprof goroutine stacks", handler: s.AdminHandler(), target: "/debug/pprof/goroutine?debug=2", wantStatus: 200, wantBody: "goroutine "},
		{name: "pprof heap text", handler: s.AdminHandler(), target: "/debug/pprof/heap?debug=1&gc=1", wantStatus: 200, wantBody: "# HeapInuse = "},
		{name: "pprof allocs text", handler: s.AdminHandler(), target: "/debug/pprof/allocs?debug=1", wantStatus: 200, wantBody: "heap profile"},
		{name: "pprof threadcreate text", handler: s.AdminHandler(), target: "/debug/pprof/threadcreate?debug=1", wantStatus: 200, wantBody: "threadcreate profile"},
		{name: "pprof block text", handler: s.AdminHandler(), target: "/debug/pprof/block?debug=1", wantStatus: 200, wantBody: "--- contention"},
		{name: "pprof mutex text", handler: s.AdminHandler(), target: "/debug/pprof/mutex?debug=1", wantStatus: 200, wantBody: "--- mutex"},
		{name: "pprof cmdline", handler: s.AdminHandler(), target: "/debug/pprof/cmdline", wantStatus: 200, wantBody: os.Args[0]},
		{name: "pprof symbol", handler: s.AdminHandler(), target: "/debug/pprof/symbol", wantStatus: 200, wantBody: "num_symbols: 1"},
		{name: "pprof unknown profile", handler: s.AdminHandler(), target: "/debug/pprof/nope", wantStatus: 404, wantBody: `no profile "nope"; profiles are allocs, block, goroutine, heap`},
		{name: "pprof bad seconds", handler: s.AdminHandler(), target: "/debug/pprof/profile?seconds=abc", wantStatus: 400, wantBody: `profile: seconds "abc"`},
		{name: "pprof zero seconds", handler: s.AdminHandler(), target: "/debug/pprof/profile?seconds=0", wantStatus: 400, wantBody: `seconds "0"`},
		{name: "pprof bad trace seconds", handler: s.AdminHandler(), target: "/debug/pprof/trace?seconds=-1", wantStatus: 400, wantBody: `trace: seconds "-1"`},
		{name: "pprof bad debug", handler: s.AdminHandler(), target: "/debug/pprof/heap?debug=x", wantStatus: 400, wantBody: `debug "x"`},
		{name: "pprof bad gc", handler: s.AdminHandler(), target: "/debug/pprof/heap?gc=yes", wantStatus: 400, wantBody: `gc "yes"`},
		{name: "pprof delta profile", handler: s.AdminHandler(), target: "/debug/pprof/heap?seconds=5", wantStatus: 400, wantBody: "heap?seconds=5: delta profiles are not served"},
		{name: "pprof bad symbol address", handler: s.AdminHandler(), target: "/debug/pprof/symbol?0x1+pc", wantStatus: 400, wantBody: `address "pc"`},
		{name: "pprof post profile", handler: s.AdminHandler(), method: "POST", target: "/debug/pprof/heap", wantStatus: 405},
		{name: "admin unknown", handler: s.AdminHandler(), target: "/quitquitquit", wantStatus: 404},
		{name: "stats prometheus", handler: s.StatsHandler(), target: "/stats/prometheus", wantStatus: 200, wantBody: "istio_tcp_connections_opened_total"},
		{name: "metrics", handler: s.StatsHandler(), target: "/metrics", wantStatus: 200, wantBody: "istio_tcp_connections_opened_total"},
		{name: "ready", handler: s.ReadyHandler(), target: "/healthz/ready", wantStatus: 200, wantBody: "ready"},
		{name: "not ready", handler: s.ReadyHandler(), target: "/healthz/ready", before: func() { ready.Store(&notSynced) }, wantStatus: 503, wantBody: "not ready: xds not synced; zds not connected"},
		{name: "ready again", handler: s.ReadyHandler(), target: "/healthz/ready", before: func() { ready.Store(nil) }, wantStatus: 200},
		{name: "ready port has nothing else", handler: s.ReadyHandler(), target: "/config_dump", wantStatus: 404},
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
			rec := httptest.NewRecorder()
			tt.handler.ServeHTTP(rec, httptest.NewRequest(method, tt.target, nil))
			if rec.Code != tt.wantStatus {
				t.Errorf("status: got %d, want %d (body %q)", rec.Code, tt.wantStatus, rec.Body.String())
			}
			if !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("body: got %q, want it to contain %q", rec.Body.String(), tt.wantBody)
			}
			if tt.wantLevel != 0 && level.Level() != tt.wantLevel {
				t.Errorf("level: got %v, want %v", level.Level(), tt.wantLevel)
			}
		})
	}
}

func TestConfigDumpJSON(t *testing.T) {
	s := New(Config{})
	s.Register(SectionPolicies, DumperFunc(func() any { return []string{"default/allow-reviews"} }))
	s.Register(SectionCertificates, DumperFunc(func() any { return map[string]any{"identity": "spiffe://cluster.local/ns/default/sa/reviews"} }))
	s.Register(SectionPolicies, DumperFunc(func() any { return []string{"default/deny-all"} })) // replaces
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	if got := rec.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("content type: got %q, want application/json", got)
	}
	var got map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if p, _ := got[SectionPolicies].([]any); len(p) != 1 || p[0] != "default/deny-all" {
		t.Errorf("policies: got %v, want [default/deny-all]", got[SectionPolicies])
	}
	if _, ok := got[SectionCertificates]; !ok {
		t.Errorf("certificates: missing from %v", got)
	}

	s.Register("broken", DumperFunc(func() any { return func() {} }))
	rec = httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("unencodable dump: got status %d, want 500", rec.Code)
	}
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
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "up 1\n") })}
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
