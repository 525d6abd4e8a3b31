package hbone

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestStress mixes complete echoes, aborts in both directions and early
// closes on shared connections, then checks that nothing hangs or leaks.
func TestStress(t *testing.T) {
	e := newEnv(t, func(r *Request) {
		if r.Authority.Port() == 81 { // the server aborts after a little
			s, err := r.Accept()
			if err != nil {
				return
			}
			s.Read(make([]byte, 100))
			s.Close()
			return
		}
		echo(r)
	}, func(_ *ServerConfig, p *PoolConfig) { p.MaxStreamsPerConn = 5 })
	const n, workers = 120, 8
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := stressOne(e, i); err != nil {
					errs <- fmt.Errorf("job %d: %w", i, err)
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.close()
	checkNoLeaks(t)
}

func stressOne(e *env, i int) error {
	rng := rand.New(rand.NewPCG(uint64(i), 1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	port := uint16(80)
	kind := i % 4
	if kind == 3 {
		port = 81
	}
	s, err := e.pool.Dial(ctx, e.src, e.target(port))
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(20 * time.Second))
	msg := make([]byte, rng.IntN(2<<20)+1)
	for j := range msg {
		msg[j] = byte(rng.Uint32())
	}
	switch kind {
	case 0, 1: // full echo
		go func() {
			s.Write(msg)
			s.CloseWrite()
		}()
		got, err := io.ReadAll(s)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo: got %d bytes, want %d", len(got), len(msg))
		}
	case 2: // client aborts mid-transfer
		go s.Write(msg)
		io.ReadAtLeast(s, make([]byte, 1024), 1)
		s.Close()
	case 3: // server aborts: the client sees a reset or a closed write
		go s.Write(msg)
		io.Copy(io.Discard, s)
	}
	return nil
}
