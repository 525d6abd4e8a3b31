// Package gopool runs short tasks, such as one proxied connection, on goroutines that wait
// for the next task once they are done. A new goroutine starts with a small stack and copies
// it each time it outgrows it; a connection's goroutines grew theirs two or three times (TLS
// writes, the access log), 6-9% of ztunnel's CPU in a profile of connection churn. A pooled
// goroutine keeps its grown stack for the next task.
package gopool

import (
	"slices"
	"sync"
	"time"
)

// Pool runs tasks on reused goroutines. The zero value is not usable; see New.
type Pool struct {
	maxIdle  int
	idleTime time.Duration

	mu   sync.Mutex
	idle []*worker // waiting for a task, the most recently used last
}

type worker struct {
	task chan func() // buffered: Go never waits for the worker to take it
}

// New returns a pool that keeps at most maxIdle goroutines waiting for tasks, each for at
// most idleTime: a burst of connections leaves no more than maxIdle goroutines (and their
// stacks) behind, and none for longer than idleTime.
func New(maxIdle int, idleTime time.Duration) *Pool {
	return &Pool{maxIdle: maxIdle, idleTime: idleTime}
}

// Go runs task on a waiting goroutine, or on a new one if none waits. A task must not leave
// its goroutine locked to its thread (runtime.LockOSThread): the next task would run there.
func (p *Pool) Go(task func()) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.task <- task
		return
	}
	p.mu.Unlock()
	go p.work(task)
}

// Idle returns how many goroutines wait for a task.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

func (p *Pool) work(task func()) {
	w := &worker{task: make(chan func(), 1)}
	var timer *time.Timer
	for {
		task()
		task = nil
		p.mu.Lock()
		if len(p.idle) >= p.maxIdle {
			p.mu.Unlock()
			return
		}
		p.idle = append(p.idle, w)
		p.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(p.idleTime)
		} else {
			timer.Reset(p.idleTime)
		}
		select {
		case task = <-w.task:
			timer.Stop()
		case <-timer.C:
			p.mu.Lock()
			i := slices.Index(p.idle, w)
			if i >= 0 {
				p.idle = slices.Delete(p.idle, i, i+1)
			}
			p.mu.Unlock()
			if i >= 0 {
				return
			}
			// Go took this worker off the list as the timer fired: its task is on the way.
			task = <-w.task
		}
	}
}
