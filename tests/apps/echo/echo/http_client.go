package echo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

type httpSender struct {
	cfg    ClientConfig
	h2c    bool
	tls    *tls.Config  // set for https
	client *http.Client // nil with NewConn
}

func newHTTPSender(h2c bool, cfg ClientConfig) *httpSender {
	s := &httpSender{cfg: cfg, h2c: h2c}
	if !cfg.NewConn {
		s.client = s.newClient()
	}
	return s
}

// newHTTPSSender sends HTTP/1.1 over TLS, verified against cfg.CACert or the system's roots.
func newHTTPSSender(cfg ClientConfig) (*httpSender, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", cfg.CACert)
		}
	}
	s := &httpSender{cfg: cfg, tls: tc}
	if !cfg.NewConn {
		s.client = s.newClient()
	}
	return s, nil
}

func (s *httpSender) newClient() *http.Client {
	c := newHTTPClient(s.h2c)
	if s.tls != nil {
		c.Transport.(*http.Transport).TLSClientConfig = s.tls
	}
	return c
}

func newHTTPClient(h2c bool) *http.Client {
	protocols := new(http.Protocols)
	if h2c {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	return &http.Client{Transport: &http.Transport{
		// No proxy from the environment: the mesh is what is under test.
		Proxy:       nil,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		Protocols:   protocols,
	}}
}

func (s *httpSender) send(ctx context.Context) (Response, error) {
	client := s.client
	if client == nil {
		client = s.newClient()
		defer client.CloseIdleConnections()
	}
	method, body := http.MethodGet, io.Reader(nil)
	if s.cfg.Payload != "" {
		method, body = http.MethodPost, strings.NewReader(s.cfg.Payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.cfg.URL, body)
	if err != nil {
		return Response{}, fmt.Errorf("creating request: %w", err)
	}
	for name, values := range s.cfg.Headers {
		req.Header[name] = values
	}
	if s.cfg.Host != "" {
		req.Host = s.cfg.Host
	}
	hr, err := client.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer hr.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hr.Body, maxBody))
	var resp Response
	if err == nil {
		err = json.Unmarshal(data, &resp)
	}
	resp.Code = hr.StatusCode
	if hr.StatusCode < 200 || hr.StatusCode > 299 {
		if err == nil && resp.Pod != "" {
			return resp, fmt.Errorf("status %d from pod %s", hr.StatusCode, resp.Pod)
		}
		// Not the echo server: a proxy on the path answered.
		return resp, fmt.Errorf("status %d: %q", hr.StatusCode, truncate(string(data), 200))
	}
	if err != nil {
		return resp, fmt.Errorf("reading answer: %w", err)
	}
	if resp.Payload != s.cfg.Payload {
		return resp, fmt.Errorf("payload: got %q, want %q", truncate(resp.Payload, 200), truncate(s.cfg.Payload, 200))
	}
	return resp, nil
}

func (s *httpSender) close() {
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
