package dns

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzHandle feeds arbitrary requests to the query path. It must never panic, and whatever it
// answers must be a well-formed response to the request's ID.
func FuzzHandle(f *testing.F) {
	f.Add(q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}.pack(f), false)
	f.Add(q{name: "Dual.Default.svc.cluster.local.", typ: dnsmessage.TypeAAAA, edns: 4096}.pack(f), true)
	f.Add(q{name: "nope.default.svc.cluster.local.", typ: dnsmessage.TypeA}.pack(f), false)
	f.Add(q{name: "example.com.", typ: dnsmessage.TypeMX}.pack(f), false)
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xc0, 0x0c}, false)
	f.Add([]byte{}, false)
	// No upstreams: everything not answered locally becomes SERVFAIL without network I/O.
	s, err := New(Config{Resolver: testResolver, Authoritative: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, req []byte, tcp bool) {
		resp := s.handle(context.Background(), req, tcp)
		if resp == nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		var p dnsmessage.Parser
		h, err := p.Start(req)
		if err != nil {
			t.Fatalf("answered a request without a header")
		}
		if m.ID != h.ID || !m.Response {
			t.Errorf("answer header: got id %d response %v, want id %d response true", m.ID, m.Response, h.ID)
		}
		if !tcp && len(resp) > maxUDP(req) {
			t.Errorf("udp answer: got %d bytes, want at most %d", len(resp), maxUDP(req))
		}
	})
}

func maxUDP(req []byte) int {
	q, _ := parseQuery(req)
	return q.udpSize
}

// FuzzParseResolvConf checks the resolv.conf parser never panics and returns only valid
// addresses.
func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 10.96.0.10\nsearch a b\n")
	f.Add("nameserver fe80::1%eth0\nnameserver")
	f.Fuzz(func(t *testing.T, text string) {
		ups, err := ParseResolvConf(strings.NewReader(text))
		if err != nil {
			return
		}
		for _, u := range ups {
			if !u.IsValid() || u.Port() != 53 {
				t.Errorf("upstream %v: want a valid address on port 53", u)
			}
		}
	})
}
