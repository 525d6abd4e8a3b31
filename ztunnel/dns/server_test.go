package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

var hosts = map[string][]netip.Addr{
	"reviews.default.svc.cluster.local":  {netip.MustParseAddr("10.96.0.10")},
	"dual.default.svc.cluster.local":     {netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00::11"), netip.MustParseAddr("::ffff:10.96.0.12")},
	"v6.default.svc.cluster.local":       {netip.MustParseAddr("fd00::12")},
	"api.external.example":               {netip.MustParseAddr("240.240.0.1")},
	"headless.default.svc.cluster.local": {},
}

var testResolver = ResolverFunc(func(name string) ([]netip.Addr, bool) {
	a, ok := hosts[name]
	return a, ok
})

// answers returns the A/AAAA/MX data of m's answers as strings.
func answers(m dnsmessage.Message) []string {
	var out []string
	for _, r := range m.Answers {
		switch b := r.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A).String())
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA).String())
		case *dnsmessage.MXResource:
			out = append(out, b.MX.String())
		}
	}
	return out
}

func TestAnswers(t *testing.T) {
	up := startUpstream(t, false)
	tests := []struct {
		name          string
		authoritative bool
		q             q
		network       string
		wantRCode     dnsmessage.RCode
		wantAnswers   []string
		wantAA        bool
		wantTC        bool
		wantUpstream  bool
	}{
		{name: "service fqdn", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantAnswers: []string{"10.96.0.10"}, wantAA: true},
		{name: "mixed case", q: q{name: "Reviews.DEFAULT.svc.Cluster.Local.", typ: dnsmessage.TypeA}, wantAnswers: []string{"10.96.0.10"}, wantAA: true},
		{name: "over tcp", network: "tcp", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantAnswers: []string{"10.96.0.10"}, wantAA: true},
		{name: "dual A takes v4 and mapped v4", q: q{name: "dual.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantAnswers: []string{"10.96.0.11", "10.96.0.12"}, wantAA: true},
		{name: "dual AAAA", q: q{name: "dual.default.svc.cluster.local.", typ: dnsmessage.TypeAAAA}, wantAnswers: []string{"fd00::11"}, wantAA: true},
		{name: "v4-only AAAA is empty NOERROR", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeAAAA}, wantAA: true},
		{name: "v6-only A is empty NOERROR", q: q{name: "v6.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantAA: true},
		{name: "service entry host", q: q{name: "api.external.example.", typ: dnsmessage.TypeA}, wantAnswers: []string{"240.240.0.1"}, wantAA: true},
		{name: "edns echoed", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, edns: 4096}, wantAnswers: []string{"10.96.0.10"}, wantAA: true},
		{name: "unknown service forwarded", q: q{name: "nope.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "unknown service authoritative", authoritative: true, q: q{name: "nope.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantAA: true},
		{name: "headless forwarded", q: q{name: "headless.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "headless forwarded when authoritative", authoritative: true, q: q{name: "headless.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "authoritative forwards the zone apex", authoritative: true, q: q{name: "svc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "authoritative ignores look-alike zones", authoritative: true, q: q{name: "x.mysvc.cluster.local.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "authoritative keeps other zones upstream", authoritative: true, q: q{name: "example.com.", typ: dnsmessage.TypeA}, wantAnswers: []string{"93.184.216.34"}, wantUpstream: true},
		{name: "authoritative still answers known", authoritative: true, q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantAnswers: []string{"10.96.0.10"}, wantAA: true},
		{name: "external forwarded", q: q{name: "example.com.", typ: dnsmessage.TypeA}, wantAnswers: []string{"93.184.216.34"}, wantUpstream: true},
		{name: "external forwarded over tcp", network: "tcp", q: q{name: "example.com.", typ: dnsmessage.TypeA}, wantAnswers: []string{"93.184.216.34"}, wantUpstream: true},
		{name: "other types forwarded", q: q{name: "example.com.", typ: dnsmessage.TypeMX}, wantAnswers: []string{"mail.example.com."}, wantUpstream: true},
		{name: "other types of known hosts forwarded", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeTXT}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "other classes forwarded", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, class: dnsmessage.ClassCHAOS}, wantRCode: dnsmessage.RCodeNameError, wantUpstream: true},
		{name: "truncated upstream retried over tcp, too big for plain udp", q: q{name: "big.example.com.", typ: dnsmessage.TypeA}, wantTC: true, wantUpstream: true},
		{name: "truncated upstream retried over tcp, fits edns", q: q{name: "big.example.com.", typ: dnsmessage.TypeA, edns: 4096}, wantAnswers: bigAnswers(), wantUpstream: true},
		{name: "truncated upstream retried over tcp, tcp client", network: "tcp", q: q{name: "big.example.com.", typ: dnsmessage.TypeA}, wantAnswers: bigAnswers(), wantUpstream: true},
		{name: "upstream servfail passed on", q: q{name: "fail.example.com.", typ: dnsmessage.TypeA}, wantRCode: dnsmessage.RCodeServerFailure, wantUpstream: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, Config{Resolver: testResolver, Upstreams: []netip.AddrPort{up.addr}, Authoritative: tt.authoritative})
			network := tt.network
			if network == "" {
				network = "udp"
			}
			addr := p.udp
			if network == "tcp" {
				addr = p.tcp
			}
			tt.q.id = uint16(1000 + i)
			before := up.queries.Load()
			m := exchange(t, network, addr, tt.q.pack(t))
			if m.ID != tt.q.id || !m.Response {
				t.Errorf("header: got id %d response %v, want id %d response true", m.ID, m.Response, tt.q.id)
			}
			if m.RCode != tt.wantRCode {
				t.Errorf("rcode: got %v, want %v", m.RCode, tt.wantRCode)
			}
			if got := answers(m); !slices.Equal(got, tt.wantAnswers) {
				t.Errorf("answers: got %v, want %v", got, tt.wantAnswers)
			}
			if m.Authoritative != tt.wantAA {
				t.Errorf("authoritative: got %v, want %v", m.Authoritative, tt.wantAA)
			}
			if m.Truncated != tt.wantTC {
				t.Errorf("truncated: got %v, want %v", m.Truncated, tt.wantTC)
			}
			if got := up.queries.Load() > before; got != tt.wantUpstream {
				t.Errorf("asked upstream: got %v, want %v", got, tt.wantUpstream)
			}
			if len(m.Questions) != 1 || !strings.EqualFold(m.Questions[0].Name.String(), tt.q.name) {
				t.Errorf("questions: got %v, want [%s]", m.Questions, tt.q.name)
			}
			var gotOPT bool
			for _, r := range m.Additionals {
				gotOPT = gotOPT || r.Header.Type == dnsmessage.TypeOPT
			}
			if wantOPT := tt.q.edns > 0 && !tt.wantUpstream; wantOPT && !gotOPT {
				t.Errorf("OPT in answer: got %v, want %v", gotOPT, wantOPT)
			}
		})
	}
}

func bigAnswers() []string {
	var out []string
	for i := range 100 {
		out = append(out, netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}).String())
	}
	return out
}

func TestUpstreamFailover(t *testing.T) {
	tests := []struct {
		name      string
		upstreams func(t *testing.T) []netip.AddrPort
		wantRCode dnsmessage.RCode
		wantA     []string
	}{
		{
			name:      "no upstreams",
			upstreams: func(*testing.T) []netip.AddrPort { return nil },
			wantRCode: dnsmessage.RCodeServerFailure,
		},
		{
			name:      "silent upstream",
			upstreams: func(t *testing.T) []netip.AddrPort { return []netip.AddrPort{startUpstream(t, true).addr} },
			wantRCode: dnsmessage.RCodeServerFailure,
		},
		{
			name: "silent then good",
			upstreams: func(t *testing.T) []netip.AddrPort {
				return []netip.AddrPort{startUpstream(t, true).addr, startUpstream(t, false).addr}
			},
			wantA: []string{"93.184.216.34"},
		},
		{
			name: "closed port then good",
			upstreams: func(t *testing.T) []netip.AddrPort {
				return []netip.AddrPort{closedPort(t), startUpstream(t, false).addr}
			},
			wantA: []string{"93.184.216.34"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, Config{Resolver: testResolver, Upstreams: tt.upstreams(t), Timeout: 200 * time.Millisecond})
			for _, network := range []string{"udp", "tcp"} {
				addr := map[string]string{"udp": p.udp, "tcp": p.tcp}[network]
				m := exchange(t, network, addr, q{name: "example.com.", typ: dnsmessage.TypeA, id: 7}.pack(t))
				if m.RCode != tt.wantRCode {
					t.Errorf("%s rcode: got %v, want %v", network, m.RCode, tt.wantRCode)
				}
				if got := answers(m); !slices.Equal(got, tt.wantA) {
					t.Errorf("%s answers: got %v, want %v", network, got, tt.wantA)
				}
			}
		})
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return a
}

func TestMalformed(t *testing.T) {
	p := startProxy(t, Config{Resolver: testResolver})
	valid := q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, id: 42}.pack(t)

	twoQuestions := func() []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 43})
		b.StartQuestions()
		for range 2 {
			b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("a.b."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		}
		m, _ := b.Finish()
		return m
	}()
	response := func() []byte {
		m := append([]byte(nil), valid...)
		m[2] |= 0x80 // QR bit
		return m
	}()
	notify := func() []byte {
		m := append([]byte(nil), valid...)
		m[2] |= 4 << 3 // opcode NOTIFY
		return m
	}()

	tests := []struct {
		name      string
		req       []byte
		wantDrop  bool
		wantRCode dnsmessage.RCode
	}{
		{name: "empty", req: []byte{}, wantDrop: true},
		{name: "short header", req: []byte{1, 2, 3, 4, 5}, wantDrop: true},
		{name: "response bit", req: response, wantDrop: true},
		{name: "no question", req: []byte{0, 44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, wantRCode: dnsmessage.RCodeFormatError},
		{name: "question cut short", req: valid[:20], wantRCode: dnsmessage.RCodeFormatError},
		{name: "two questions", req: twoQuestions, wantRCode: dnsmessage.RCodeFormatError},
		{name: "opcode notify", req: notify, wantRCode: dnsmessage.RCodeNotImplemented},
		{name: "trailing garbage ignored", req: append(append([]byte(nil), valid...), 0xff, 0xff), wantRCode: dnsmessage.RCodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("udp", p.udp)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			if tt.wantDrop {
				// Send the request then a valid query on the same socket: the first answer is
				// the valid query's when the request was dropped.
				if _, err := c.Write(tt.req); err != nil {
					t.Fatal(err)
				}
			}
			req := tt.req
			if tt.wantDrop {
				req = valid
			}
			resp, err := exchangeOn(c, req)
			if err != nil {
				t.Fatal(err)
			}
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("unpacking answer: %v", err)
			}
			if tt.wantDrop {
				if m.ID != 42 || m.RCode != dnsmessage.RCodeSuccess {
					t.Errorf("first answer: got id %d %v, want the valid query's (id 42, success)", m.ID, m.RCode)
				}
				return
			}
			if m.RCode != tt.wantRCode {
				t.Errorf("rcode: got %v, want %v", m.RCode, tt.wantRCode)
			}
		})
	}
	if p.s.Dropped() != 3 {
		t.Errorf("Dropped: got %d, want 3", p.s.Dropped())
	}
}

// exchangeOn writes raw on c and returns the next datagram read.
func exchangeOn(c net.Conn, raw []byte) ([]byte, error) {
	if _, err := c.Write(raw); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMsg)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func TestTCPPipelined(t *testing.T) {
	p := startProxy(t, Config{Resolver: testResolver})
	c, err := net.Dial("tcp", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		if err := writeFramed(c, q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA, id: uint16(i)}.pack(t)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2+maxMsg)
	for i := range 5 {
		resp, err := readFramed(c, buf)
		if err != nil {
			t.Fatal(err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatal(err)
		}
		if m.ID != uint16(i) || len(m.Answers) != 1 {
			t.Errorf("answer %d: got id %d with %d answers, want id %d with 1", i, m.ID, len(m.Answers), i)
		}
	}
}

func TestTCPConnLimit(t *testing.T) {
	p := startProxy(t, Config{Resolver: testResolver, MaxTCPConns: 1})
	first, err := net.Dial("tcp", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// A query on the first connection proves the server holds it before the second arrives.
	if err := writeFramed(first, q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}.pack(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := readFramed(first, make([]byte, 2+maxMsg)); err != nil {
		t.Fatal(err)
	}
	if _, err := exchangeRaw("tcp", p.tcp, q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}.pack(t)); err == nil {
		t.Errorf("second connection: got an answer, want it closed")
	}
	first.Close()
	// Once the first connection is gone the slot frees up.
	deadline := time.Now().Add(testTimeout)
	for {
		_, err := exchangeRaw("tcp", p.tcp, q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}.pack(t))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection after the first closed: got %v, want an answer", err)
		}
	}
}

func TestConcurrentQueries(t *testing.T) {
	up := startUpstream(t, false)
	p := startProxy(t, Config{Resolver: testResolver, Upstreams: []netip.AddrPort{up.addr}, MaxInFlight: 4, MaxTCPConns: 64})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			name := "reviews.default.svc.cluster.local."
			if i%2 == 1 {
				name = "example.com."
			}
			network, addr := "tcp", p.tcp // tcp: a query is never lost, it waits for a slot
			if _, err := exchangeRaw(network, addr, q{name: name, typ: dnsmessage.TypeA, id: uint16(i)}.pack(t)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("query: %v", err)
	}
}

func TestServeStops(t *testing.T) {
	before := runtime.NumGoroutine()
	up := startUpstream(t, true)
	s, err := New(Config{Resolver: testResolver, Upstreams: []netip.AddrPort{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	// An idle TCP client and a query stuck on the silent upstream must not hold Serve up.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write(q{name: "example.com.", typ: dnsmessage.TypeA}.pack(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for up.queries.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the query never reached the upstream")
		}
		runtime.Gosched()
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: got %v, want nil", err)
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Errorf("packet conn still open after Serve returned")
	}
	c.Close()
	u.Close()
	testutil.WaitGoroutines(t, before+2, testTimeout) // the fake upstream's two goroutines run until cleanup
}

func TestNew(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, ErrNoResolver) {
		t.Errorf("New without resolver: got %v, want %v", err, ErrNoResolver)
	}
	if _, err := New(Config{Resolver: testResolver, Upstreams: []netip.AddrPort{{}}}); err == nil {
		t.Errorf("New with invalid upstream: got nil error, want one")
	}
}

func TestDialError(t *testing.T) {
	dial := func(context.Context, string, string) (net.Conn, error) { return nil, errTest }
	p := startProxy(t, Config{Resolver: testResolver, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}, Dial: dial})
	m := exchange(t, "udp", p.udp, q{name: "example.com.", typ: dnsmessage.TypeA}.pack(t))
	if m.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("rcode: got %v, want SERVFAIL", m.RCode)
	}
}

type observed struct {
	mu       sync.Mutex
	requests []string
	upstream []string
}

func (o *observed) ObserveRequest(queryType, protocol string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests = append(o.requests, queryType+"/"+protocol)
}

func (o *observed) ObserveUpstream(queryType, protocol string, took time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := queryType + "/" + protocol
	if err != nil {
		r += " failed"
	}
	if took <= 0 {
		r += " no duration"
	}
	o.upstream = append(o.upstream, r)
}

func TestObserver(t *testing.T) {
	up := startUpstream(t, false)
	tests := []struct {
		name         string
		upstreams    []netip.AddrPort
		network      string
		q            q
		wantRequests []string
		wantUpstream []string
	}{
		{name: "local", network: "udp", q: q{name: "reviews.default.svc.cluster.local.", typ: dnsmessage.TypeA}, wantRequests: []string{"a/udp"}},
		{name: "forwarded", upstreams: []netip.AddrPort{up.addr}, network: "tcp", q: q{name: "example.com.", typ: dnsmessage.TypeAAAA}, wantRequests: []string{"aaaa/tcp"}, wantUpstream: []string{"aaaa/tcp"}},
		{name: "forward failed", network: "udp", q: q{name: "example.com.", typ: dnsmessage.TypeSRV}, wantRequests: []string{"srv/udp"}, wantUpstream: []string{"srv/udp failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o observed
			p := startProxy(t, Config{Resolver: testResolver, Upstreams: tt.upstreams, Observer: &o})
			addr := map[string]string{"udp": p.udp, "tcp": p.tcp}[tt.network]
			exchange(t, tt.network, addr, tt.q.pack(t))
			p.stop(t)
			if !slices.Equal(o.requests, tt.wantRequests) {
				t.Errorf("requests: got %v, want %v", o.requests, tt.wantRequests)
			}
			if !slices.Equal(o.upstream, tt.wantUpstream) {
				t.Errorf("upstream: got %v, want %v", o.upstream, tt.wantUpstream)
			}
		})
	}
}
