package dns

import (
	"context"
	"net"
	"strconv"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// TestAnswerFromQueryDestination binds the proxy to the wildcard address, as ztunnel does, and
// queries it at a loopback address other than the one the kernel would pick as the answer's
// source. A connected client only accepts the answer if it comes back from that address.
func TestAnswerFromQueryDestination(t *testing.T) {
	s, err := New(Config{Resolver: testResolver})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ network, bind, dial string }{
		{"udp4", "0.0.0.0:0", "127.0.0.2"},
		{"udp4", "0.0.0.0:0", "127.0.0.1"},
		{"udp", "[::]:0", "127.0.0.3"},
		{"udp", "[::]:0", "::1"},
	}
	for _, tt := range tests {
		t.Run(tt.bind+"->"+tt.dial, func(t *testing.T) {
			pc, err := net.ListenPacket(tt.network, tt.bind)
			if err != nil {
				t.Skipf("no %s socket here: %v", tt.bind, err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, pc, nil) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Serve: %v", err)
				}
			}()
			port := pc.LocalAddr().(*net.UDPAddr).Port
			addr := net.JoinHostPort(tt.dial, strconv.Itoa(port))
			m := exchange(t, "udp", addr, q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, id: 9}.pack(t))
			if m.ID != 9 || len(m.Answers) != 1 {
				t.Errorf("answer: got id %d with %d answers, want id 9 with 1", m.ID, len(m.Answers))
			}
		})
	}
}
