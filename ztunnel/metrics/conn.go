package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/prom"
)

// Conn tracks one connection opened with [Metrics.Open]. Its methods are safe for concurrent
// use (the two copy directions run on different goroutines) and do nothing on a nil *Conn.
type Conn struct {
	m                      *Metrics
	closed, sent, received *prom.Counter
	labels                 Labels
	start                  time.Time
	sentN, receivedN       atomic.Uint64
	done                   atomic.Bool
	end                    atomic.Int64 // close time in Unix nanoseconds, once done

	// flushMu guards the flushed counts below: what the counters already hold.
	flushMu                  sync.Mutex
	flushedSent, flushedRecv uint64
}

// AddSent counts n bytes sent to the connection's peer that opened it (the client for the
// destination reporter, i.e. Istio's "response" direction).
func (c *Conn) AddSent(n int) {
	if c != nil && n > 0 {
		c.sentN.Add(uint64(n))
	}
}

// AddReceived counts n bytes received from the peer (Istio's "request" direction).
func (c *Conn) AddReceived(n int) {
	if c != nil && n > 0 {
		c.receivedN.Add(uint64(n))
	}
}

// Close counts the connection as closed and moves its remaining bytes into the counters.
// Only the first call counts; bytes added after it are not reported.
func (c *Conn) Close() {
	if c == nil || c.done.Swap(true) {
		return
	}
	c.end.Store(time.Now().UnixNano())
	c.m.mu.Lock()
	delete(c.m.live, c)
	c.m.mu.Unlock()
	c.flush()
	c.closed.Inc()
}

// Sent returns the bytes counted by AddSent so far.
func (c *Conn) Sent() uint64 {
	if c == nil {
		return 0
	}
	return c.sentN.Load()
}

// Received returns the bytes counted by AddReceived so far.
func (c *Conn) Received() uint64 {
	if c == nil {
		return 0
	}
	return c.receivedN.Load()
}

// Duration is how long the connection has been open, or was open once closed.
func (c *Conn) Duration() time.Duration {
	if c == nil {
		return 0
	}
	if end := c.end.Load(); end != 0 {
		return time.Unix(0, end).Sub(c.start)
	}
	return time.Since(c.start)
}

// Labels returns the labels the connection was opened with.
func (c *Conn) Labels() Labels {
	if c == nil {
		return Labels{}
	}
	return c.labels
}

func (c *Conn) flush() {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if s := c.sentN.Load(); s > c.flushedSent {
		c.sent.Add(s - c.flushedSent)
		c.flushedSent = s
	}
	if r := c.receivedN.Load(); r > c.flushedRecv {
		c.received.Add(r - c.flushedRecv)
		c.flushedRecv = r
	}
}
