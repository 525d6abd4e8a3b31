package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// testTimeout bounds every test; waits poll against it instead of sleeping.
const testTimeout = 30 * time.Second

var testID = Identity{Pod: "echo-v1-abc", Namespace: "ns1", ServiceAccount: "sa1", Version: "v1", Cluster: "c1"}

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkLeaks fails if goroutines other than the test framework's outlive
// the tests, after giving closed connections a moment to wind down.
func checkLeaks() error {
	framework := []string{"testing.(*M).", "testing.tRunner", "testing.runTests", "testing.(*T).Run", "os/signal.", "runtime.ensureSigM"}
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		// The first goroutine is this one.
		stacks := strings.Split(string(buf), "\n\n")[1:]
		var leaked []string
		for _, g := range stacks {
			if !slices.ContainsFunc(framework, func(f string) bool { return strings.Contains(g, f) }) {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		<-tick.C
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startServer serves every protocol on loopback ports picked by the kernel.
func startServer(t *testing.T, id Identity) *Server {
	t.Helper()
	srv := NewServer(ServerConfig{
		Identity:  id,
		Host:      "127.0.0.1",
		HTTPPorts: []int{0, 0},
		GRPCPorts: []int{0},
		TCPPorts:  []int{0},
	})
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return srv
}

func TestProtocols(t *testing.T) {
	srv := startServer(t, testID)
	tests := []struct {
		name         string
		cfg          ClientConfig
		wantProtocol string
		wantListener string
		check        func(t *testing.T, r Result)
	}{{
		name:         "http1",
		cfg:          ClientConfig{URL: "http://" + srv.Addr("http", 0) + "/a/b", Count: 3},
		wantProtocol: ProtocolHTTP1,
		wantListener: srv.Addr("http", 0),
		check: func(t *testing.T, r Result) {
			if r.Method != "GET" || r.Path != "/a/b" || r.Code != 200 {
				t.Errorf("method, path, code = %s %s %d, want GET /a/b 200", r.Method, r.Path, r.Code)
			}
		},
	}, {
		name:         "h2c second port",
		cfg:          ClientConfig{URL: "http://" + srv.Addr("http", 1) + "/", Count: 3, Protocol: ClientH2C},
		wantProtocol: ProtocolHTTP2,
		wantListener: srv.Addr("http", 1),
	}, {
		name:         "http1 new conn with payload",
		cfg:          ClientConfig{URL: "http://" + srv.Addr("http", 0) + "/", Count: 3, NewConn: true, Payload: "hello"},
		wantProtocol: ProtocolHTTP1,
		wantListener: srv.Addr("http", 0),
		check: func(t *testing.T, r Result) {
			if r.Method != "POST" || r.Payload != "hello" {
				t.Errorf("method, payload = %s %q, want POST \"hello\"", r.Method, r.Payload)
			}
		},
	}, {
		name:         "grpc",
		cfg:          ClientConfig{URL: "grpc://" + srv.Addr("grpc", 0), Count: 3, Payload: "hi"},
		wantProtocol: ProtocolGRPC,
		wantListener: srv.Addr("grpc", 0),
		check: func(t *testing.T, r Result) {
			if r.Path != GRPCMethod || r.Host != srv.Addr("grpc", 0) || r.Payload != "hi" {
				t.Errorf("path, host, payload = %s %s %q, want %s %s \"hi\"", r.Path, r.Host, r.Payload, GRPCMethod, srv.Addr("grpc", 0))
			}
		},
	}, {
		name:         "grpc new conn",
		cfg:          ClientConfig{URL: "grpc://" + srv.Addr("grpc", 0), Count: 2, NewConn: true},
		wantProtocol: ProtocolGRPC,
		wantListener: srv.Addr("grpc", 0),
	}, {
		name:         "tcp",
		cfg:          ClientConfig{URL: "tcp://" + srv.Addr("tcp", 0), Count: 3, Payload: "some bytes\nand more"},
		wantProtocol: ProtocolTCP,
		wantListener: srv.Addr("tcp", 0),
		check: func(t *testing.T, r Result) {
			if r.Payload != "some bytes\nand more" {
				t.Errorf("payload = %q, want it echoed", r.Payload)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.KeepResponses = -1
			sum, err := Run(testContext(t), tt.cfg)
			if err != nil {
				t.Fatalf("Run: %v\nsummary: %+v", err, sum)
			}
			if sum.Total != tt.cfg.Count || sum.OK != tt.cfg.Count || sum.Errors != 0 {
				t.Errorf("total, ok, errors = %d %d %d, want %d %d 0", sum.Total, sum.OK, sum.Errors, tt.cfg.Count, tt.cfg.Count)
			}
			if len(sum.Responses) != tt.cfg.Count {
				t.Fatalf("got %d responses, want %d", len(sum.Responses), tt.cfg.Count)
			}
			r := sum.Responses[0]
			if r.Protocol != tt.wantProtocol {
				t.Errorf("protocol = %q, want %q", r.Protocol, tt.wantProtocol)
			}
			_, wantPort, _ := net.SplitHostPort(tt.wantListener)
			if fmt.Sprint(r.Port) != wantPort {
				t.Errorf("port = %d, want %s", r.Port, wantPort)
			}
			if host, _, err := net.SplitHostPort(r.SourceAddr); err != nil || host != "127.0.0.1" {
				t.Errorf("sourceAddr = %q, want 127.0.0.1:port", r.SourceAddr)
			}
			want := Response{Pod: "echo-v1-abc", Namespace: "ns1", ServiceAccount: "sa1", Version: "v1", Cluster: "c1"}
			got := Response{Pod: r.Pod, Namespace: r.Namespace, ServiceAccount: r.ServiceAccount, Version: r.Version, Cluster: r.Cluster}
			if got.Pod != want.Pod || got.Namespace != want.Namespace || got.ServiceAccount != want.ServiceAccount || got.Version != want.Version || got.Cluster != want.Cluster {
				t.Errorf("identity = %+v, want %+v", got, want)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func TestHTTPOptions(t *testing.T) {
	srv := startServer(t, testID)
	base := "http://" + srv.Addr("http", 0)
	tests := []struct {
		name       string
		cfg        ClientConfig
		wantErr    bool
		wantCode   int
		wantHeader map[string]string
		wantHost   string
	}{{
		name:     "status",
		cfg:      ClientConfig{URL: base + "/?status=503", Count: 2},
		wantErr:  true,
		wantCode: 503,
	}, {
		name:     "bad status",
		cfg:      ClientConfig{URL: base + "/?status=abc", Count: 1},
		wantErr:  true,
		wantCode: 400,
	}, {
		name:     "delay",
		cfg:      ClientConfig{URL: base + "/?delay=50ms", Count: 1},
		wantCode: 200,
	}, {
		name:     "delay over timeout",
		cfg:      ClientConfig{URL: base + "/?delay=10s", Count: 1, Timeout: 100 * time.Millisecond},
		wantErr:  true,
		wantCode: 0,
	}, {
		name: "headers and host",
		cfg: ClientConfig{URL: base + "/", Count: 1, Host: "echo.ns1.svc.cluster.local",
			Headers: http.Header{"X-Ambit-Test": {"a", "b"}, "User-Agent": {"ambit"}}},
		wantCode:   200,
		wantHeader: map[string]string{"x-ambit-test": "a,b", "user-agent": "ambit"},
		wantHost:   "echo.ns1.svc.cluster.local",
	}, {
		name: "h2c headers and host",
		cfg: ClientConfig{URL: base + "/", Count: 1, Protocol: ClientH2C, Host: "echo:80",
			Headers: http.Header{"X-Ambit-Test": {"h2"}}},
		wantCode:   200,
		wantHeader: map[string]string{"x-ambit-test": "h2"},
		wantHost:   "echo:80",
	}, {
		name: "grpc metadata and authority",
		cfg: ClientConfig{URL: "grpc://" + srv.Addr("grpc", 0), Count: 1, Host: "echo:7070",
			Headers: http.Header{"X-Ambit-Test": {"g"}}},
		wantHeader: map[string]string{"x-ambit-test": "g"},
		wantHost:   "echo:7070",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum, err := Run(testContext(t), tt.cfg)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("Run error = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, ErrRequestsFailed) {
				t.Errorf("Run error = %v, want it to wrap ErrRequestsFailed", err)
			}
			r := sum.Responses[0]
			if r.Code != tt.wantCode {
				t.Errorf("code = %d, want %d", r.Code, tt.wantCode)
			}
			if tt.wantCode != 0 && sum.ByCode[tt.wantCode] != tt.cfg.Count {
				t.Errorf("byCode = %v, want %d x %d", sum.ByCode, tt.cfg.Count, tt.wantCode)
			}
			for k, v := range tt.wantHeader {
				if r.Headers[k] != v {
					t.Errorf("header %s = %q, want %q (all: %v)", k, r.Headers[k], v, r.Headers)
				}
			}
			if tt.wantHost != "" && r.Host != tt.wantHost {
				t.Errorf("host = %q, want %q", r.Host, tt.wantHost)
			}
		})
	}
	t.Run("status keeps identity", func(t *testing.T) {
		sum, _ := Run(testContext(t), ClientConfig{URL: base + "/?status=503", Count: 2})
		if sum.ByPod["echo-v1-abc"] != 2 || sum.FirstError != "status 503 from pod echo-v1-abc" {
			t.Errorf("byPod, firstError = %v %q, want 2 answers from echo-v1-abc and an error", sum.ByPod, sum.FirstError)
		}
	})
}

func TestCountsPerPod(t *testing.T) {
	v1 := startServer(t, Identity{Pod: "echo-v1-a", Version: "v1"})
	v2 := startServer(t, Identity{Pod: "echo-v2-b", Version: "v2"})
	ctx := testContext(t)
	sum1, err := Run(ctx, ClientConfig{URL: "http://" + v1.Addr("http", 0), Count: 4, KeepResponses: 2})
	if err != nil {
		t.Fatalf("Run v1: %v", err)
	}
	sum2, err := Run(ctx, ClientConfig{URL: "tcp://" + v2.Addr("tcp", 0), Count: 3})
	if err != nil {
		t.Fatalf("Run v2: %v", err)
	}
	tests := []struct {
		sum      Summary
		pod, ver string
		n, keptN int
	}{{sum1, "echo-v1-a", "v1", 4, 2}, {sum2, "echo-v2-b", "v2", 3, 3}}
	for _, tt := range tests {
		if len(tt.sum.ByPod) != 1 || tt.sum.ByPod[tt.pod] != tt.n || tt.sum.ByVersion[tt.ver] != tt.n {
			t.Errorf("byPod, byVersion = %v %v, want %s and %s %d times", tt.sum.ByPod, tt.sum.ByVersion, tt.pod, tt.ver, tt.n)
		}
		if len(tt.sum.Responses) != tt.keptN {
			t.Errorf("kept %d responses, want %d", len(tt.sum.Responses), tt.keptN)
		}
	}
}

func TestClosedPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	for _, url := range []string{"http://" + addr, "grpc://" + addr, "tcp://" + addr} {
		for _, newConn := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s new-conn=%v", url[:strings.Index(url, ":")], newConn), func(t *testing.T) {
				sum, err := Run(testContext(t), ClientConfig{URL: url, Count: 3, Timeout: 5 * time.Second, NewConn: newConn})
				if !errors.Is(err, ErrRequestsFailed) {
					t.Errorf("Run error = %v, want ErrRequestsFailed", err)
				}
				if sum.Total != 3 || sum.Errors != 3 || sum.OK != 0 || sum.FirstError == "" {
					t.Errorf("summary = %+v, want 3 errors with firstError", sum)
				}
			})
		}
	}
}

func TestBadClientConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClientConfig
		want string
	}{
		{"no count", ClientConfig{URL: "http://x:1"}, "count 0"},
		{"no host", ClientConfig{URL: "x:1", Count: 1}, "want scheme://host:port"},
		{"bad protocol", ClientConfig{URL: "http://x:1", Count: 1, Protocol: "udp"}, `protocol "udp"`},
		{"bad scheme", ClientConfig{URL: "ftp://x:1", Count: 1}, `url "ftp://x:1": want scheme http, grpc or tcp`},
		{"scheme mismatch", ClientConfig{URL: "http://x:1", Count: 1, Protocol: "grpc"}, "needs scheme grpc://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum, err := Run(testContext(t), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) || sum.Total != 0 {
				t.Errorf("Run = %d sent, error %v; want none sent and error containing %q", sum.Total, err, tt.want)
			}
		})
	}
}

// TestH2CUpgrade checks the HTTP/1.1 "Upgrade: h2c" path that curl --http2
// takes, which the Go client does not.
func TestH2CUpgrade(t *testing.T) {
	srv := startServer(t, testID)
	ctx := testContext(t)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", srv.Addr("http", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	fmt.Fprintf(c, "GET /up HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, "101") {
		t.Fatalf("status line = %q, %v; want 101 Switching Protocols", status, err)
	}
	for line := ""; line != "\r\n"; {
		if line, err = br.ReadString('\n'); err != nil {
			t.Fatalf("reading upgrade headers: %v", err)
		}
	}
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, br)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var body []byte
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v", err)
		}
		if df, ok := f.(*http2.DataFrame); ok && df.StreamID == 1 {
			body = append(body, df.Data()...)
			if df.StreamEnded() {
				break
			}
		}
	}
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decoding %q: %v", body, err)
	}
	if r.Protocol != ProtocolHTTP2 || r.Path != "/up" {
		t.Errorf("protocol, path = %q %q, want %q /up", r.Protocol, r.Path, ProtocolHTTP2)
	}
}

func TestHealthz(t *testing.T) {
	srv := startServer(t, testID)
	req, _ := http.NewRequestWithContext(testContext(t), "GET", "http://"+srv.Addr("http", 0)+"/healthz", nil)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("healthz = %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
}

// TestHTTPS checks https targets (such as the apiserver through its Service) against a
// given CA: verified with it, refused without it.
func TestHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"major":"1"}`))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := Run(testContext(t), ClientConfig{URL: srv.URL + "/version", Count: 2, Timeout: 5 * time.Second, CACert: ca, NewConn: true})
	if err != nil || sum.OK != 2 {
		t.Errorf("with the CA: %+v, %v; want 2 ok", sum, err)
	}
	sum, err = Run(testContext(t), ClientConfig{URL: srv.URL, Count: 1, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrRequestsFailed) || !strings.Contains(sum.FirstError, "certificate") {
		t.Errorf("without the CA: %+v, %v; want a certificate error", sum, err)
	}
	if _, err := Run(testContext(t), ClientConfig{URL: srv.URL, Count: 1, CACert: "/nonexistent"}); err == nil || !strings.Contains(err.Error(), "reading CA file") {
		t.Errorf("missing CA file: %v; want an error naming it", err)
	}
}
