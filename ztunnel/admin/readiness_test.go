package admin

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	r := NewReadiness("xds synced", "zds connected", "certificates")
	cfg := loopbackConfig()
	cfg.Ready = r.Err
	s := startLoopback(t, New(cfg))
	steps := []struct {
		name       string
		do         func()
		wantStatus int
		wantBody   string
	}{
		{"nothing yet", func() {}, 503, "not ready: waiting for xds synced, zds connected, certificates\n"},
		{"unknown condition ignored", func() { r.Set("bogus"); r.Unset("bogus") }, 503, "not ready: waiting for xds synced, zds connected, certificates\n"},
		{"zds", func() { r.Set("zds connected") }, 503, "not ready: waiting for xds synced, certificates\n"},
		{"xds", func() { r.Set("xds synced") }, 503, "not ready: waiting for certificates\n"},
		{"all", func() { r.Set("certificates") }, 200, "ready\n"},
		{"set twice", func() { r.Set("certificates") }, 200, "ready\n"},
		{"zds lost", func() { r.Unset("zds connected"); r.Unset("zds connected") }, 503, "not ready: waiting for zds connected\n"},
		{"xds lost keeps order", func() { r.Unset("xds synced") }, 503, "not ready: waiting for xds synced, zds connected\n"},
	}
	for _, st := range steps {
		st.do()
		resp, body := do(t, "GET", s.ReadyAddr(), "/healthz/ready", nil)
		if resp.StatusCode != st.wantStatus || body != st.wantBody {
			t.Errorf("%s: got %d %q, want %d %q", st.name, resp.StatusCode, body, st.wantStatus, st.wantBody)
		}
	}
}

// The kubelet's HTTP probe, byte for byte as kube-probe sends it: it closes after one
// answer and reads the status.
func TestReadinessKubeletProbe(t *testing.T) {
	s := startLoopback(t, New(loopbackConfig()))
	conn, err := net.Dial("tcp", s.ReadyAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /healthz/ready HTTP/1.1\r\nHost: %s\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n", s.ReadyAddr())
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(got, "\r\n\r\nready\n") || !strings.Contains(got, "\r\nConnection: close\r\n") {
		t.Errorf("got %q, want 200 ready and the connection closed", got)
	}
}
