package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c" //nolint:staticcheck // deprecated, but net/http has no "Upgrade: h2c"; see newHTTPService
)

// MaxDelay bounds the ?delay= query parameter.
const MaxDelay = 30 * time.Second

// maxBody bounds the request body echoed back as payload.
const maxBody = 1 << 20

type httpService struct {
	srv *http.Server
}

func newHTTPService(id Identity, port int, log *slog.Logger) *httpService {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	// The standard server speaks HTTP/2 with prior knowledge itself.
	protocols.SetUnencryptedHTTP2(true)
	h := &httpHandler{id: id, port: port}
	return &httpService{srv: &http.Server{
		// The standard server has no HTTP/1.1 "Upgrade: h2c"; curl --http2
		// and some proxies use it, so x/net serves those requests. Drop it
		// when net/http learns the upgrade.
		Handler:           upgradeAsHTTP2(h2c.NewHandler(h, &http2.Server{})), //nolint:staticcheck // see above
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
}

func (s *httpService) serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving http: %w", err)
	}
	return nil
}

func (s *httpService) shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
		return fmt.Errorf("shutting down http server: %w", err)
	}
	return nil
}

// upgradeAsHTTP2 reports a request that upgrades to h2c as HTTP/2.0: its
// answer goes on HTTP/2 stream 1, like every later request on the connection.
// The condition is the one h2c.NewHandler upgrades on.
func upgradeAsHTTP2(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 &&
			httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c") &&
			httpguts.HeaderValuesContainsToken(r.Header["Connection"], "HTTP2-Settings") {
			up := *r
			up.Proto, up.ProtoMajor, up.ProtoMinor = ProtocolHTTP2, 2, 0
			r = &up
		}
		h.ServeHTTP(w, r)
	})
}

// httpHandler answers every path but /healthz with the JSON [Response].
type httpHandler struct {
	id   Identity
	port int
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		io.WriteString(w, "ok")
		return
	}
	status, delay, err := parseQuery(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading body: %v", err), http.StatusBadRequest)
		return
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	resp := h.id.response(r.Proto, h.port)
	resp.SourceAddr = r.RemoteAddr
	resp.Host = r.Host
	resp.Method = r.Method
	resp.Path = r.URL.Path
	for name, values := range r.Header {
		resp.addHeader(name, values)
	}
	resp.Code = status
	resp.Payload = string(body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(resp)
}

// parseQuery reads ?status= and ?delay=.
func parseQuery(r *http.Request) (status int, delay time.Duration, err error) {
	q := r.URL.Query()
	status = http.StatusOK
	if s := q.Get("status"); s != "" {
		status, err = strconv.Atoi(s)
		if err != nil || status < 200 || status > 599 {
			return 0, 0, fmt.Errorf("query status=%q: want a number from 200 to 599", s)
		}
	}
	if s := q.Get("delay"); s != "" {
		delay, err = time.ParseDuration(s)
		if err != nil || delay < 0 || delay > MaxDelay {
			return 0, 0, fmt.Errorf("query delay=%q: want a duration from 0s to %s", s, MaxDelay)
		}
	}
	return status, delay, nil
}
