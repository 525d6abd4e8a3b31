package echo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
)

// ServerConfig says what a [Server] listens on and who it is.
type ServerConfig struct {
	Identity Identity
	// Host is the address to bind, "" for all addresses.
	Host string
	// Ports to serve per protocol; port 0 picks a free port (see
	// [Server.Listeners]).
	HTTPPorts []int
	GRPCPorts []int
	TCPPorts  []int
	// Logger receives errors of the listeners. Defaults to no logging.
	Logger *slog.Logger
}

// Listener is one bound port of a [Server].
type Listener struct {
	// Protocol is "http", "grpc" or "tcp".
	Protocol string
	Addr     net.Addr
}

// service is one protocol served on one listener.
type service interface {
	serve(ln net.Listener) error
	// shutdown stops accepting, waits for open requests until ctx is done,
	// then closes what is left.
	shutdown(ctx context.Context) error
}

// Server serves the echo protocols on all configured ports.
type Server struct {
	cfg ServerConfig

	// mu guards the fields below.
	mu        sync.Mutex
	listeners []Listener
	services  []service
	started   bool

	wg sync.WaitGroup
}

// NewServer returns a server for cfg; call Start to listen.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg}
}

// Start binds every port and serves them in the background until Stop. It
// binds nothing if one port fails.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("starting echo server: already started")
	}
	type bound struct {
		ln  net.Listener
		svc service
	}
	var all []bound
	bind := func(protocol string, ports []int, newService func(port int) service) error {
		for _, port := range ports {
			addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(port))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listening on %s for %s: %w", addr, protocol, err)
			}
			all = append(all, bound{ln, newService(portOf(ln.Addr()))})
			s.listeners = append(s.listeners, Listener{Protocol: protocol, Addr: ln.Addr()})
		}
		return nil
	}
	id, log := s.cfg.Identity, s.cfg.Logger
	err := errors.Join(
		bind("http", s.cfg.HTTPPorts, func(port int) service { return newHTTPService(id, port, log) }),
		bind("grpc", s.cfg.GRPCPorts, func(port int) service { return newGRPCService(id, port) }),
		bind("tcp", s.cfg.TCPPorts, func(port int) service { return newTCPService(id, port, log) }),
	)
	if err != nil {
		for _, b := range all {
			b.ln.Close()
		}
		s.listeners = nil
		return err
	}
	s.started = true
	for _, b := range all {
		s.services = append(s.services, b.svc)
		s.wg.Go(func() {
			if err := b.svc.serve(b.ln); err != nil {
				log.Error("serving", "addr", b.ln.Addr().String(), "error", err)
			}
		})
	}
	return nil
}

// Listeners returns the bound ports in the order HTTP, gRPC, TCP, each in
// the order configured.
func (s *Server) Listeners() []Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Listener(nil), s.listeners...)
}

// Addr returns the address of the i-th listener of protocol ("http", "grpc"
// or "tcp"), or "" if there is none.
func (s *Server) Addr(protocol string, i int) string {
	for _, l := range s.Listeners() {
		if l.Protocol != protocol {
			continue
		}
		if i == 0 {
			return l.Addr.String()
		}
		i--
	}
	return ""
}

// Stop stops accepting, lets open requests finish until ctx is done, closes
// the rest and waits for every serving goroutine to return.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	services := s.services
	s.services = nil
	s.mu.Unlock()

	errs := make([]error, len(services))
	var wg sync.WaitGroup
	for i, svc := range services {
		wg.Go(func() { errs[i] = svc.shutdown(ctx) })
	}
	wg.Wait()
	s.wg.Wait()
	return errors.Join(errs...)
}
