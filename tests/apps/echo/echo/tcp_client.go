package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
)

type tcpSender struct {
	addr    string
	payload string
}

func newTCPSender(hostport string, cfg ClientConfig) *tcpSender {
	payload := cfg.Payload
	if payload == "" {
		payload = DefaultPayload
	}
	return &tcpSender{addr: hostport, payload: payload}
}

// send connects, reads the identity line, writes the payload and reads it
// back. It reads exactly the payload back instead of half-closing, since
// proxies on the path need not pass a half-close on.
func (s *tcpSender) send(ctx context.Context) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return Response{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return Response{}, fmt.Errorf("reading identity line from %s: %w", s.addr, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return resp, fmt.Errorf("decoding identity line %q: %w", truncate(string(line), 200), err)
	}
	if _, err := io.WriteString(c, s.payload); err != nil {
		return resp, fmt.Errorf("writing payload: %w", err)
	}
	buf := make([]byte, len(s.payload))
	n, err := io.ReadFull(br, buf)
	resp.Payload = string(buf[:n])
	if err != nil {
		return resp, fmt.Errorf("reading payload back after %d of %d bytes: %w", n, len(buf), err)
	}
	if resp.Payload != s.payload {
		return resp, fmt.Errorf("payload: got %q, want %q", truncate(resp.Payload, 200), truncate(s.payload, 200))
	}
	return resp, nil
}

func (s *tcpSender) close() {}
