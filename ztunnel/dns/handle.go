package dns

import (
	"context"
	"errors"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

const (
	// minUDPSize is the UDP payload every DNS client accepts (RFC 1035).
	minUDPSize = 512
	// ourUDPSize is the EDNS payload size we advertise, the size DNS Flag Day 2020 settled on.
	ourUDPSize = 1232
)

// query is what the proxy needs from a parsed request.
type query struct {
	header   dnsmessage.Header
	question dnsmessage.Question
	name     string // normalized question name
	edns     bool   // the request carried an OPT record
	udpSize  int    // the payload size the client accepts over UDP
}

// errNoHeader marks requests too short to answer: without an ID there is no one to reply to.
var errNoHeader = errors.New("dns request has no header")

// parseQuery reads the parts of req the proxy acts on. It returns errNoHeader when req cannot
// be answered at all, and another error (with a usable q.header) when it deserves FORMERR.
func parseQuery(req []byte) (q query, err error) {
	var p dnsmessage.Parser
	q.header, err = p.Start(req)
	if err != nil {
		return q, errNoHeader
	}
	q.udpSize = minUDPSize
	qs, err := p.AllQuestions()
	if err != nil {
		return q, err
	}
	if len(qs) != 1 {
		return q, errors.New("dns request must have exactly one question")
	}
	q.question = qs[0]
	q.name = normalize(q.question.Name.String())
	// An unreadable answer, authority or additional section only costs the client its EDNS size.
	if p.SkipAllAnswers() != nil || p.SkipAllAuthorities() != nil {
		return q, nil
	}
	for {
		h, err := p.AdditionalHeader()
		if err != nil {
			return q, nil
		}
		if h.Type == dnsmessage.TypeOPT {
			q.edns = true
			// The OPT record's class is the client's UDP payload size (RFC 6891).
			q.udpSize = max(minUDPSize, int(h.Class))
		}
		if p.SkipAdditional() != nil {
			return q, nil
		}
	}
}

// handle answers one request. tcp says whether it came over TCP (no size limit). It returns nil
// when the request is to be dropped.
func (s *Server) handle(ctx context.Context, req []byte, tcp bool) []byte {
	q, err := parseQuery(req)
	switch {
	case errors.Is(err, errNoHeader):
		s.dropped.Add(1)
		return nil
	case q.header.Response:
		// Never answer a response: that is how reflection loops start.
		s.dropped.Add(1)
		return nil
	case err != nil:
		return s.reply(q, dnsmessage.RCodeFormatError, nil, tcp)
	case q.header.OpCode != 0:
		return s.reply(q, dnsmessage.RCodeNotImplemented, nil, tcp)
	}
	qtype, proto := "", "udp"
	if s.cfg.Observer != nil {
		qtype = queryType(q.question.Type)
		if tcp {
			proto = "tcp"
		}
		s.cfg.Observer.ObserveRequest(qtype, proto)
	}
	if q.question.Class == dnsmessage.ClassINET && (q.question.Type == dnsmessage.TypeA || q.question.Type == dnsmessage.TypeAAAA) {
		addrs, ok := s.cfg.Resolver.LookupHost(q.name)
		switch {
		case ok && len(addrs) > 0:
			return s.reply(q, dnsmessage.RCodeSuccess, addrs, tcp)
		case ok:
			// Known without addresses (a headless Service): its records are the pods', which
			// the cluster DNS serves.
		case s.cfg.Authoritative && strings.HasSuffix(q.name, s.svcSuffix):
			// The zone apex itself exists (it has an SOA upstream), so only names below it
			// are answered NXDOMAIN.
			return s.reply(q, dnsmessage.RCodeNameError, nil, tcp)
		}
	}
	start := time.Now()
	resp, err := s.forward(ctx, req, q)
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveUpstream(qtype, proto, time.Since(start), err)
	}
	if err != nil {
		return s.reply(q, dnsmessage.RCodeServerFailure, nil, tcp)
	}
	if !tcp && len(resp) > q.udpSize {
		// An upstream TCP answer too long for the client's UDP: tell it to ask over TCP.
		return s.truncated(q)
	}
	return resp
}

// queryType names t as Istio's DNS metrics do: lowercase, "a", "aaaa", "srv".
func queryType(t dnsmessage.Type) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "Type"))
}
