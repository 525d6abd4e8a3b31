package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// tcpService writes the JSON identity line on each connection, then echoes
// every byte it reads until EOF.
type tcpService struct {
	id   Identity
	port int
	log  *slog.Logger

	// mu guards the fields below.
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	closed bool

	wg sync.WaitGroup // one per open connection
}

func newTCPService(id Identity, port int, log *slog.Logger) *tcpService {
	return &tcpService{id: id, port: port, log: log, conns: map[net.Conn]bool{}}
}

func (s *tcpService) serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ln.Close()
	}
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			// Running out of file descriptors is not fatal; back off
			// rather than spin.
			s.log.Warn("accepting tcp connection", "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.handle(c)
		}()
	}
}

func (s *tcpService) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = true
	s.wg.Add(1)
	return true
}

func (s *tcpService) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	c.Close()
}

func (s *tcpService) handle(c net.Conn) {
	resp := s.id.response(ProtocolTCP, s.port)
	resp.SourceAddr = c.RemoteAddr().String()
	line, err := json.Marshal(resp)
	if err != nil {
		return
	}
	if _, err := c.Write(append(line, '\n')); err != nil {
		return
	}
	io.Copy(c, c)
}

func (s *tcpService) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("shutting down tcp server: %w", ctx.Err())
}
