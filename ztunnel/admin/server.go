// Package admin serves ztunnel's operator endpoints, on the ports Istio's ztunnel uses:
//
//   - localhost:15000, the admin server: /config_dump (what ztunnel knows, as JSON, assembled
//     from the [Dumper]s the caller registers), /logging (read or change the log level) and
//     /debug/pprof/.
//   - :15020, Prometheus metrics at /stats/prometheus and /metrics.
//   - :15021, readiness at /healthz/ready: 200 once the caller's [ReadyFunc] says so, 503 with
//     its reason before.
//
// A [Server] binds all three in [Server.Start] and drains them in [Server.Stop]; the handlers
// are also available on their own for callers that serve them elsewhere. They are served by
// internal/httpserve, not net/http: ztunnel's resident memory is mostly its own binary's
// pages, and net/http with its HTTP/2 code is about 1 MB of them.
package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/httpserve"
)

// Default addresses, as in Istio ambient.
const (
	DefaultAdminAddr = "localhost:15000"
	DefaultStatsAddr = ":15020"
	DefaultReadyAddr = ":15021"
)

// Config configures a [Server]. Every field has a default.
type Config struct {
	// AdminAddr, StatsAddr and ReadyAddr are the listen addresses; they default to
	// DefaultAdminAddr, DefaultStatsAddr and DefaultReadyAddr. "-" disables that server.
	AdminAddr, StatsAddr, ReadyAddr string
	// Level is the log level /logging reads and changes: pass the LevelVar of the binary's
	// slog handler. Nil gets a private LevelVar, which changes nothing but the endpoint.
	Level *slog.LevelVar
	// Metrics writes the Prometheus text exposition (format 0.0.4, prom.ContentType) that
	// /stats/prometheus and /metrics serve, e.g. metrics.Metrics.WriteText; nil answers 404
	// there.
	Metrics func(io.Writer) error
	// Ready decides /healthz/ready; nil is always ready.
	Ready ReadyFunc
	// Log receives errors of the HTTP servers and the requests they refused; nil discards
	// them.
	Log *slog.Logger
}

// Server is ztunnel's admin, metrics and readiness servers.
type Server struct {
	cfg Config

	// mu guards dumpers.
	mu      sync.Mutex
	dumpers map[string]Dumper

	// runMu guards the fields below, set by Start and cleared by Stop.
	runMu   sync.Mutex
	servers []*httpserve.Server
	addrs   map[string]net.Addr
	wg      sync.WaitGroup
	errs    chan error
}

// ErrStarted is returned by [Server.Start] on a server already started.
var ErrStarted = errors.New("admin server already started")

// New returns a server for cfg; nothing is bound until Start.
func New(cfg Config) *Server {
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = DefaultAdminAddr
	}
	if cfg.StatsAddr == "" {
		cfg.StatsAddr = DefaultStatsAddr
	}
	if cfg.ReadyAddr == "" {
		cfg.ReadyAddr = DefaultReadyAddr
	}
	if cfg.Level == nil {
		cfg.Level = new(slog.LevelVar)
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	return &Server{cfg: cfg, dumpers: make(map[string]Dumper)}
}

// Start binds the three listeners and serves them until Stop. If one cannot be bound, none
// stays open. ctx is the base context of every request.
func (s *Server) Start(ctx context.Context) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if s.servers != nil {
		return ErrStarted
	}
	type bound struct {
		name string
		ln   net.Listener
		h    httpserve.Handler
	}
	var bs []bound
	closeAll := func() {
		for _, b := range bs {
			b.ln.Close()
		}
	}
	for _, x := range []struct {
		name, addr string
		h          httpserve.Handler
	}{
		{"admin", s.cfg.AdminAddr, s.AdminHandler()},
		{"stats", s.cfg.StatsAddr, s.StatsHandler()},
		{"readiness", s.cfg.ReadyAddr, s.ReadyHandler()},
	} {
		if x.addr == "-" {
			continue
		}
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", x.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listening for the %s server on %s: %w", x.name, x.addr, err)
		}
		bs = append(bs, bound{x.name, ln, x.h})
	}
	s.addrs = make(map[string]net.Addr)
	s.errs = make(chan error, len(bs))
	s.servers = []*httpserve.Server{}
	base := context.WithoutCancel(ctx)
	for _, b := range bs {
		var log *slog.Logger
		if s.cfg.Log != nil {
			log = s.cfg.Log.With("server", b.name)
		}
		srv := httpserve.New(b.h, httpserve.Config{
			ReadHeaderTimeout: 10 * time.Second,
			BaseContext:       base,
			Log:               log,
		})
		s.servers = append(s.servers, srv)
		s.addrs[b.name] = b.ln.Addr()
		s.wg.Go(func() {
			if err := srv.Serve(b.ln); !errors.Is(err, httpserve.ErrServerClosed) {
				err = fmt.Errorf("serving the %s server: %w", b.name, err)
				if s.cfg.Log != nil {
					s.cfg.Log.Error("admin server stopped", "server", b.name, "error", err)
				}
				s.errs <- err
			}
		})
	}
	return nil
}

// Stop shuts the servers down gracefully, waiting for requests in flight until ctx ends and
// then closing what is left. It returns the first error a server stopped with, if any.
func (s *Server) Stop(ctx context.Context) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	var errs []error
	for i := len(s.servers) - 1; i >= 0; i-- {
		srv := s.servers[i]
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
			errs = append(errs, fmt.Errorf("shutting down the admin servers: %w", err))
		}
	}
	s.wg.Wait()
	if s.errs != nil {
		close(s.errs)
		for err := range s.errs {
			errs = append(errs, err)
		}
	}
	s.servers, s.addrs, s.errs = nil, nil, nil
	return errors.Join(errs...)
}

// Run starts the servers, waits for ctx to end and stops them, giving requests in flight
// up to drain to finish.
func (s *Server) Run(ctx context.Context, drain time.Duration) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
	defer cancel()
	return s.Stop(sctx)
}

// AdminAddr returns the bound address of the admin server once started (nil before, or when
// disabled): useful with ":0" addresses in tests.
func (s *Server) AdminAddr() net.Addr { return s.addr("admin") }

// StatsAddr returns the bound address of the metrics server; see AdminAddr.
func (s *Server) StatsAddr() net.Addr { return s.addr("stats") }

// ReadyAddr returns the bound address of the readiness server; see AdminAddr.
func (s *Server) ReadyAddr() net.Addr { return s.addr("readiness") }

func (s *Server) addr(name string) net.Addr {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	return s.addrs[name]
}
