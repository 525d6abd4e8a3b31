package dns

import (
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"
)

// reply builds the proxy's own answer to q: rcode, and for NOERROR the addrs of the queried
// family. It returns nil if no answer can be built (the request is then dropped).
func (s *Server) reply(q query, rcode dnsmessage.RCode, addrs []netip.Addr, tcp bool) []byte {
	msg, err := s.build(q, rcode, addrs, false)
	if err != nil {
		return nil
	}
	if !tcp && len(msg) > q.udpSize {
		return s.truncated(q)
	}
	return msg
}

// truncated builds an empty answer with the TC bit set, which makes the client retry over TCP.
func (s *Server) truncated(q query) []byte {
	msg, err := s.build(q, dnsmessage.RCodeSuccess, nil, true)
	if err != nil {
		return nil
	}
	return msg
}

func (s *Server) build(q query, rcode dnsmessage.RCode, addrs []netip.Addr, tc bool) ([]byte, error) {
	local := rcode == dnsmessage.RCodeSuccess || rcode == dnsmessage.RCodeNameError
	h := dnsmessage.Header{
		ID:                 q.header.ID,
		Response:           true,
		OpCode:             q.header.OpCode,
		Authoritative:      local && !tc,
		Truncated:          tc,
		RecursionDesired:   q.header.RecursionDesired,
		RecursionAvailable: true,
		RCode:              rcode,
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
	b.EnableCompression()
	if q.question.Name.Length > 0 {
		if err := b.StartQuestions(); err != nil {
			return nil, err
		}
		if err := b.Question(q.question); err != nil {
			return nil, err
		}
	}
	if rcode == dnsmessage.RCodeSuccess && !tc {
		if err := b.StartAnswers(); err != nil {
			return nil, err
		}
		rh := dnsmessage.ResourceHeader{Name: q.question.Name, Type: q.question.Type, Class: dnsmessage.ClassINET, TTL: s.ttl}
		for _, a := range addrs {
			a = a.Unmap()
			var err error
			switch {
			case q.question.Type == dnsmessage.TypeA && a.Is4():
				err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
			case q.question.Type == dnsmessage.TypeAAAA && a.Is6():
				err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if q.edns {
		if err := b.StartAdditionals(); err != nil {
			return nil, err
		}
		var rh dnsmessage.ResourceHeader
		if err := rh.SetEDNS0(ourUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
			return nil, err
		}
		if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
