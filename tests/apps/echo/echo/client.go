package echo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// ErrRequestsFailed is returned by [Run] when at least one request failed.
var ErrRequestsFailed = errors.New("requests failed")

// Client protocols; see [ClientConfig.Protocol].
const (
	ClientHTTP = "http"
	ClientH2C  = "h2c"
	ClientGRPC = "grpc"
	ClientTCP  = "tcp"
)

// ClientConfig says what [Run] sends.
type ClientConfig struct {
	// URL is http://host:port/path, https://host:port/path (HTTP/1.1 over TLS, e.g. to the
	// apiserver), grpc://host:port or tcp://host:port.
	URL string
	// CACert is a PEM file of the CAs an https server is verified against; empty means the
	// system's roots.
	CACert string
	Count  int
	// Protocol is http (HTTP/1.1), h2c (HTTP/2 with prior knowledge), grpc
	// or tcp. Empty means the URL scheme.
	Protocol string
	// Host overrides the Host header or :authority.
	Host    string
	Headers http.Header
	// Timeout bounds each request.
	Timeout time.Duration
	// QPS limits the request rate; 0 sends as fast as answers come.
	QPS float64
	// Payload is sent as the HTTP body (POST), the gRPC "payload" field or
	// the TCP bytes; the answer must echo it back. TCP sends DefaultPayload
	// when empty.
	Payload string
	// NewConn opens a new connection per request so that kube-proxy load
	// balancing shows. TCP always does.
	NewConn bool
	// KeepResponses is how many results Summary.Responses keeps: 0 for
	// DefaultKeepResponses, -1 for all.
	KeepResponses int
}

// DefaultPayload is what TCP mode sends when [ClientConfig.Payload] is empty.
const DefaultPayload = "ambit-echo"

// DefaultKeepResponses is how many full results a [Summary] keeps by default.
const DefaultKeepResponses = 5

// DefaultClientConfig returns the defaults of the command's flags.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{Count: 1, Timeout: 5 * time.Second, KeepResponses: DefaultKeepResponses}
}

// Result is one request's outcome: the server's answer, if any, and the
// error, if any.
type Result struct {
	Response
	Error string `json:"error,omitempty"`
}

// Summary is what [Run] reports. Pods and versions are counted for every
// answer that carried an identity, failed status codes included.
type Summary struct {
	Total      int            `json:"total"`
	OK         int            `json:"ok"`
	Errors     int            `json:"errors"`
	ByPod      map[string]int `json:"byPod"`
	ByVersion  map[string]int `json:"byVersion"`
	ByCode     map[int]int    `json:"byCode,omitempty"`
	FirstError string         `json:"firstError,omitempty"`
	Responses  []Result       `json:"responses"`
}

// sender sends one request per call over one protocol.
type sender interface {
	send(ctx context.Context) (Response, error)
	close()
}

// Run sends cfg.Count requests one after the other and summarises the
// answers. The error wraps [ErrRequestsFailed] when a request failed, and the
// summary is still complete; a bad config gives an error and an empty summary.
func Run(ctx context.Context, cfg ClientConfig) (Summary, error) {
	sum := Summary{ByPod: map[string]int{}, ByVersion: map[string]int{}, Responses: []Result{}}
	s, err := newSender(cfg)
	if err != nil {
		return sum, err
	}
	defer s.close()
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultClientConfig().Timeout
	}
	if cfg.KeepResponses == 0 {
		cfg.KeepResponses = DefaultKeepResponses
	}
	var tick <-chan time.Time
	if cfg.QPS > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / cfg.QPS))
		defer t.Stop()
		tick = t.C
	}
	for i := range cfg.Count {
		if i > 0 && tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			return sum, fmt.Errorf("sending request %d of %d: %w", i+1, cfg.Count, ctx.Err())
		}
		rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		resp, err := s.send(rctx)
		cancel()
		sum.add(resp, err, cfg.KeepResponses)
	}
	if sum.Errors > 0 {
		return sum, fmt.Errorf("%d of %d requests failed, first: %s: %w", sum.Errors, sum.Total, sum.FirstError, ErrRequestsFailed)
	}
	return sum, nil
}

func (sum *Summary) add(resp Response, err error, keep int) {
	sum.Total++
	r := Result{Response: resp}
	if err != nil {
		sum.Errors++
		r.Error = err.Error()
		if sum.FirstError == "" {
			sum.FirstError = r.Error
		}
	} else {
		sum.OK++
	}
	if resp.Pod != "" {
		sum.ByPod[resp.Pod]++
		sum.ByVersion[resp.Version]++
	}
	if resp.Code != 0 {
		if sum.ByCode == nil {
			sum.ByCode = map[int]int{}
		}
		sum.ByCode[resp.Code]++
	}
	if keep < 0 || len(sum.Responses) < keep {
		sum.Responses = append(sum.Responses, r)
	}
}

func newSender(cfg ClientConfig) (sender, error) {
	if cfg.Count < 1 {
		return nil, fmt.Errorf("count %d: want at least 1", cfg.Count)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing url: %w", err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("url %q: want scheme://host:port, scheme http, grpc or tcp", cfg.URL)
	}
	want := map[string]string{ClientHTTP: "http", ClientH2C: "http", ClientGRPC: "grpc", ClientTCP: "tcp"}
	protocol := cfg.Protocol
	if u.Scheme == "https" && (protocol == "" || protocol == ClientHTTP) {
		return newHTTPSSender(cfg)
	}
	if protocol == "" {
		if _, ok := want[u.Scheme]; !ok || u.Scheme == ClientH2C {
			return nil, fmt.Errorf("url %q: want scheme http, grpc or tcp", cfg.URL)
		}
		protocol = u.Scheme
	}
	scheme, ok := want[protocol]
	if !ok {
		return nil, fmt.Errorf("protocol %q: want http, h2c, grpc or tcp", protocol)
	}
	if u.Scheme != scheme {
		return nil, fmt.Errorf("url %q: protocol %s needs scheme %s://", cfg.URL, protocol, scheme)
	}
	switch protocol {
	case ClientGRPC:
		return newGRPCSender(u.Host, cfg)
	case ClientTCP:
		return newTCPSender(u.Host, cfg), nil
	default:
		return newHTTPSender(protocol == ClientH2C, cfg), nil
	}
}
