package hbone

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestShutdownHandsOverToNextServer is a rolling update of the server side: a second server
// listens next to the first on the same address (SO_REUSEPORT), and the first shuts down
// while clients keep opening streams. Streams the client opened before it read the GOAWAY
// are served by the first, later ones go to a new connection, which only the second still
// accepts: no Dial fails.
func TestShutdownHandsOverToNextServer(t *testing.T) {
	var oldServed, newServed atomic.Int64
	e := newEnv(t, func(r *Request) { oldServed.Add(1); echo(r) })
	cfg := e.srv.cfg
	cfg.Handler = func(r *Request) { newServed.Add(1); echo(r) }
	next, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := reusePortListen(e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	nextServed := make(chan error, 1)
	go func() { nextServed <- next.Serve(ln) }()
	defer func() {
		next.Close()
		<-nextServed
	}()
	e.dial(t, 80).Close() // the pool's connection, to whichever server the kernel picked

	const workers, rounds = 4, 150
	var wg sync.WaitGroup
	var failures atomic.Int64
	var firstErr atomic.Value
	shut := make(chan error, 1)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				if w == 0 && i == rounds/3 {
					go func() {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						shut <- e.srv.Shutdown(ctx)
					}()
				}
				if err := echoRound(e, fmt.Sprintf("w%d-%d", w, i)); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown of the first server: %v; want its streams drained", err)
	}
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d streams failed across the hand-over; first: %v", n, workers*rounds, firstErr.Load())
	}
	if newServed.Load() == 0 {
		t.Errorf("the second server served no stream (the first served %d)", oldServed.Load())
	}
	// Once the first is gone, everything reaches the second.
	before := newServed.Load()
	if err := echoRound(e, "after"); err != nil {
		t.Errorf("after the first server shut down: %v", err)
	}
	if newServed.Load() != before+1 {
		t.Errorf("a stream after the hand-over did not reach the second server")
	}
}

// echoRound opens a stream through e's pool, sends msg, half-closes and wants msg back.
func echoRound(e *env, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.pool.Dial(ctx, e.src, e.target(80))
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s, msg); err != nil {
		return fmt.Errorf("writing %q: %w", msg, err)
	}
	if err := s.CloseWrite(); err != nil {
		return fmt.Errorf("half-closing after %q: %w", msg, err)
	}
	b, err := io.ReadAll(s)
	if err != nil || string(b) != msg {
		return fmt.Errorf("echo of %q: got %q, %v", msg, b, err)
	}
	return nil
}
