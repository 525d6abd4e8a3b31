package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// fakeUpstream is a DNS server on loopback, UDP and TCP on the same port:
//   - example.com A -> 93.184.216.34, MX -> mail.example.com
//   - big.example.com A -> truncated over UDP, 100 addresses over TCP
//   - fail.example.com -> SERVFAIL
//   - anything else -> NXDOMAIN
//
// A silent upstream reads queries and never answers.
type fakeUpstream struct {
	addr    netip.AddrPort
	queries atomic.Int32
	tcp     atomic.Int32
}

func startUpstream(t *testing.T, silent bool) *fakeUpstream {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	for range 10 {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err = net.ListenPacket("udp4", ln.Addr().String())
		if err == nil {
			break
		}
		ln.Close()
		ln = nil
	}
	if ln == nil {
		t.Fatal("no free port for udp and tcp")
	}
	return serveUpstream(t, pc, ln, silent)
}

// serveUpstream serves the fake upstream on pc and ln (same address) until the test ends.
func serveUpstream(t *testing.T, pc net.PacketConn, ln net.Listener, silent bool) *fakeUpstream {
	u := &fakeUpstream{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, maxMsg)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.queries.Add(1)
			if silent {
				continue
			}
			if resp := upstreamAnswer(buf[:n], false); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.tcp.Add(1)
			buf := make([]byte, 2+maxMsg)
			req, err := readFramed(c, buf)
			if err == nil && !silent {
				if resp := upstreamAnswer(req, true); resp != nil {
					writeFramed(c, resp)
				}
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		<-done
		<-done
	})
	return u
}

func upstreamAnswer(req []byte, tcp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	name := normalize(q.Name.String())
	switch {
	case name == "example.com", name == "big.example.com" && tcp:
	case name == "big.example.com":
		rh.Truncated = true
	case name == "fail.example.com":
		rh.RCode = dnsmessage.RCodeServerFailure
	default:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: dnsmessage.ClassINET, TTL: 60}
	switch {
	case rh.RCode != dnsmessage.RCodeSuccess || rh.Truncated:
	case name == "example.com" && q.Type == dnsmessage.TypeA:
		b.AResource(hdr, dnsmessage.AResource{A: [4]byte{93, 184, 216, 34}})
	case name == "example.com" && q.Type == dnsmessage.TypeMX:
		b.MXResource(hdr, dnsmessage.MXResource{Pref: 10, MX: dnsmessage.MustNewName("mail.example.com.")})
	case name == "big.example.com" && q.Type == dnsmessage.TypeA:
		for i := range 100 {
			b.AResource(hdr, dnsmessage.AResource{A: [4]byte{10, 9, 0, byte(i)}})
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return nil
	}
	return msg
}

// proxy is a Server serving on loopback sockets.
type proxy struct {
	s        *Server
	udp, tcp string
	done     chan error
	cancel   context.CancelFunc
}

func startProxy(t *testing.T, cfg Config) *proxy {
	t.Helper()
	s, err := New(cfg)
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
	p := &proxy{s: s, udp: pc.LocalAddr().String(), tcp: ln.Addr().String(), done: make(chan error, 1), cancel: cancel}
	go func() { p.done <- s.Serve(ctx, pc, ln) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proxy) stop(t *testing.T) {
	t.Helper()
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("Serve: got %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return after its context ended")
	}
}

type q struct {
	name  string
	typ   dnsmessage.Type
	id    uint16
	edns  int // EDNS UDP size; 0 = no OPT record
	class dnsmessage.Class
}

func (x q) pack(t testing.TB) []byte {
	t.Helper()
	if x.class == 0 {
		x.class = dnsmessage.ClassINET
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: x.id, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(x.name), Type: x.typ, Class: x.class}); err != nil {
		t.Fatal(err)
	}
	if x.edns > 0 {
		b.StartAdditionals()
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(x.edns, dnsmessage.RCodeSuccess, false)
		b.OPTResource(rh, dnsmessage.OPTResource{})
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// exchange sends raw to addr over network and returns the parsed answer.
func exchange(t *testing.T, network, addr string, raw []byte) dnsmessage.Message {
	t.Helper()
	resp, err := exchangeRaw(network, addr, raw)
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking answer: %v", err)
	}
	return m
}

func exchangeRaw(network, addr string, raw []byte) ([]byte, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	if network == "tcp" || network == "tcp4" {
		if err := writeFramed(c, raw); err != nil {
			return nil, err
		}
		resp, err := readFramed(c, make([]byte, 2+maxMsg))
		if err != nil {
			return nil, err
		}
		return append([]byte(nil), resp...), nil
	}
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

var errTest = errors.New("test")
