package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// errNoUpstream is returned by forward when no upstream gave a usable answer.
var errNoUpstream = errors.New("no upstream resolver answered")

// forward sends req to the upstreams in order and returns the first usable answer. An answer
// with SERVFAIL or REFUSED moves on to the next upstream but is returned if no other answers.
func (s *Server) forward(ctx context.Context, req []byte, q query) ([]byte, error) {
	var last []byte
	for _, u := range s.cfg.Upstreams {
		if ctx.Err() != nil {
			break
		}
		resp, err := s.exchange(ctx, u, req, q)
		if err != nil {
			continue
		}
		var p dnsmessage.Parser
		h, err := p.Start(resp)
		if err != nil {
			continue
		}
		if h.RCode == dnsmessage.RCodeServerFailure || h.RCode == dnsmessage.RCodeRefused {
			last = resp
			continue
		}
		return resp, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, errNoUpstream
}

// exchange asks one upstream over UDP, and again over TCP if the UDP answer was truncated.
func (s *Server) exchange(ctx context.Context, u netip.AddrPort, req []byte, q query) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	resp, err := s.exchangeUDP(ctx, u, req, q)
	if err != nil {
		return nil, err
	}
	var p dnsmessage.Parser
	if h, err := p.Start(resp); err == nil && h.Truncated {
		return s.exchangeTCP(ctx, u, req, q)
	}
	return resp, nil
}

func (s *Server) exchangeUDP(ctx context.Context, u netip.AddrPort, req []byte, q query) ([]byte, error) {
	c, err := s.cfg.Dial(ctx, "udp", u.String())
	if err != nil {
		return nil, fmt.Errorf("dialing upstream %s: %w", u, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("sending query to upstream %s: %w", u, err)
	}
	buf := make([]byte, maxMsg)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("reading answer from upstream %s: %w", u, err)
		}
		// A datagram that does not answer our question (late, spoofed, garbage) is ignored.
		if matches(buf[:n], q) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

func (s *Server) exchangeTCP(ctx context.Context, u netip.AddrPort, req []byte, q query) ([]byte, error) {
	c, err := s.cfg.Dial(ctx, "tcp", u.String())
	if err != nil {
		return nil, fmt.Errorf("dialing upstream %s: %w", u, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if err := writeFramed(c, req); err != nil {
		return nil, fmt.Errorf("sending query to upstream %s: %w", u, err)
	}
	buf := make([]byte, 2+maxMsg)
	resp, err := readFramed(c, buf)
	if err != nil {
		return nil, fmt.Errorf("reading answer from upstream %s: %w", u, err)
	}
	if !matches(resp, q) {
		return nil, fmt.Errorf("upstream %s answered another question", u)
	}
	return append([]byte(nil), resp...), nil
}

// matches reports whether resp is a response to q: same ID and, if it has one, same question.
func matches(resp []byte, q query) bool {
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil || !h.Response || h.ID != q.header.ID {
		return false
	}
	got, err := p.Question()
	if errors.Is(err, dnsmessage.ErrSectionDone) {
		// Some servers leave the question out of errors such as FORMERR.
		return true
	}
	if err != nil {
		return false
	}
	return got.Type == q.question.Type && got.Class == q.question.Class &&
		normalize(got.Name.String()) == q.name
}
