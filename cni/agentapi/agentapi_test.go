package agentapi

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// The plugin gets its answer while the work the agent left for after the reply still runs;
// that work runs once, after the answer.
func TestAfterReplyRunsAfterTheAnswer(t *testing.T) {
	release, ran := make(chan struct{}), make(chan string, 2)
	h := Handler(func(ctx context.Context, path string, req PodRequest) (bool, error) {
		AfterReply(ctx, func() {
			<-release
			ran <- req.PodName
		})
		return true, nil
	})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := NewClient(sock, 10*time.Second).Call(ctx, PathAdd, PodRequest{PodNamespace: "demo", PodName: "web"})
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

// Outside a Handler call there is no reply to wait for: f runs at once.
func TestAfterReplyOutsideAHandlerRunsAtOnce(t *testing.T) {
	ran := false
	AfterReply(context.Background(), func() { ran = true })
	if !ran {
		t.Error("AfterReply outside a Handler call did not run f")
	}
}

// BenchmarkCall times one call from the plugin's client to an agent answering at once:
//
//	go test -run '^$' -bench BenchmarkCall ./cni/agentapi
func BenchmarkCall(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(func(context.Context, string, PodRequest) (bool, error) { return true, nil })}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewClient(sock, 10*time.Second)
	req := PodRequest{ContainerID: "abc", Netns: "/var/run/netns/cni-1", IfName: "eth0", PodNamespace: "demo", PodName: "web-0", PodUID: "uid-1"}
	for b.Loop() {
		if _, err := c.Call(context.Background(), PathAdd, req); err != nil {
			b.Fatal(err)
		}
	}
}
