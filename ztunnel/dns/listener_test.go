package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// flakyListener fails its first Accepts with errs, then accepts from the inner listener.
type flakyListener struct {
	net.Listener
	errs  []error
	calls atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if i := int(l.calls.Add(1)) - 1; i < len(l.errs) {
		return nil, l.errs[i]
	}
	return l.Listener.Accept()
}

func TestAcceptErrors(t *testing.T) {
	fatal := errors.New("listener broke")
	tests := []struct {
		name      string
		errs      []error
		wantServe error // nil: queries are answered after the errors
	}{
		{name: "out of descriptors", errs: []error{fmt.Errorf("accept: %w", syscall.EMFILE), syscall.ENFILE, syscall.ECONNABORTED}},
		{name: "fatal", errs: []error{fatal}, wantServe: fatal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{Resolver: testResolver})
			if err != nil {
				t.Fatal(err)
			}
			inner, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := &flakyListener{Listener: inner, errs: tt.errs}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, nil, ln) }()
			if tt.wantServe != nil {
				if err := <-done; !errors.Is(err, tt.wantServe) {
					t.Errorf("Serve: got %v, want %v", err, tt.wantServe)
				}
				return
			}
			m := exchange(t, "tcp", inner.Addr().String(), q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, id: 5}.pack(t))
			if m.ID != 5 || len(m.Answers) != 1 {
				t.Errorf("answer after accept errors: got id %d with %d answers, want id 5 with 1", m.ID, len(m.Answers))
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: got %v, want nil", err)
			}
		})
	}
}
