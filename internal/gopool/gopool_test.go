package gopool

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitIdle polls until p has want idle goroutines.
func waitIdle(t *testing.T, p *Pool, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Idle() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle goroutines, want %d", p.Idle(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// A task runs; the goroutine that ran it then waits, and runs the next task.
func TestReusesTheGoroutine(t *testing.T) {
	p := New(4, time.Minute)
	done := make(chan struct{})
	p.Go(func() { done <- struct{}{} })
	<-done
	waitIdle(t, p, 1)
	release := make(chan struct{})
	p.Go(func() { <-release })
	if got := p.Idle(); got != 0 {
		t.Fatalf("while the second task runs: %d idle goroutines, want 0 (it took the waiting one)", got)
	}
	close(release)
	waitIdle(t, p, 1)
}

// Tasks running at once each get a goroutine; afterwards at most maxIdle wait.
func TestKeepsAtMostMaxIdle(t *testing.T) {
	p := New(3, time.Minute)
	release := make(chan struct{})
	var running sync.WaitGroup
	var ran atomic.Int32
	for range 10 {
		running.Add(1)
		p.Go(func() {
			running.Done()
			<-release
			ran.Add(1)
		})
	}
	running.Wait() // all 10 run at once: none waited for another
	close(release)
	waitIdle(t, p, 3)
	time.Sleep(20 * time.Millisecond)
	if got, n := p.Idle(), ran.Load(); got != 3 || n != 10 {
		t.Fatalf("after 10 tasks at once: %d idle (want 3), %d ran (want 10)", got, n)
	}
}

// An idle goroutine leaves after idleTime; the pool then starts a new one.
func TestIdleGoroutinesLeave(t *testing.T) {
	p := New(8, 20*time.Millisecond)
	done := make(chan struct{})
	p.Go(func() { done <- struct{}{} })
	<-done
	waitIdle(t, p, 1)
	waitIdle(t, p, 0)
	p.Go(func() { done <- struct{}{} })
	<-done
	waitIdle(t, p, 1)
}

// Tasks handed over while idle goroutines time out all run (run with -race).
func TestGoRacesTheIdleTimeout(t *testing.T) {
	p := New(2, time.Millisecond)
	var wg sync.WaitGroup
	var ran atomic.Int32
	for i := range 2000 {
		wg.Add(1)
		p.Go(func() {
			defer wg.Done()
			ran.Add(1)
		})
		if i%7 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	if n := ran.Load(); n != 2000 {
		t.Fatalf("%d of 2000 tasks ran", n)
	}
	waitIdle(t, p, 0)
}

//go:noinline
func deep(n int) byte {
	var pad [512]byte
	if n == 0 {
		return pad[0]
	}
	return deep(n-1) + pad[n%512]
}

// BenchmarkGo runs a task that needs a 32 KiB stack, as a connection's goroutine does, on a
// new goroutine each time or on the pool's:
//
//	go test -run '^$' -bench . ./internal/gopool
func BenchmarkGo(b *testing.B) {
	task := func(wg *sync.WaitGroup) func() {
		return func() {
			deep(48)
			wg.Done()
		}
	}
	b.Run("new", func(b *testing.B) {
		var wg sync.WaitGroup
		for b.Loop() {
			wg.Add(1)
			go task(&wg)()
			wg.Wait()
		}
	})
	b.Run("pool", func(b *testing.B) {
		p := New(4, time.Minute)
		var wg sync.WaitGroup
		for b.Loop() {
			wg.Add(1)
			p.Go(task(&wg))
			wg.Wait()
		}
	})
}
