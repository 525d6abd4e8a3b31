// Package memtrim gives a Go program's freed heap back to the operating system after a burst.
//
// The Go runtime collects garbage once the heap has grown by GOGC percent over the live heap it
// marked last. After a burst that held megabytes at once (a bulk transfer filling receive
// buffers), that goal stays at the burst's size: a proxy that then allocates little runs no
// collection until the runtime forces one two minutes later, and keeps the memory resident
// until then and beyond, since free pages are returned slowly. A Trimmer looks at the heap
// goal now and then and, when it has grown well past what it was after the last trim, collects
// and returns every free page at once. The goal must grow 1.5x again, or Retry pass, before the
// next trim, so a program whose live heap really is large pays one collection per growth or
// per Retry, not one per look; Retry catches the end of a burst that a trim in its middle saw
// as live.
package memtrim

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// DefaultFloor is the heap goal up to which a Trimmer never trims: the Go runtime's minimum
// goal at GOGC=100 (4 MiB), which only a heap with little live data has. Above it, a trim at
// most every DefaultRetry costs one collection of the live heap per retry.
const DefaultFloor = 4 << 20

// Floor is the Go runtime's minimum heap goal at a GOGC of gcPercent (it scales with it), the
// floor for a Trimmer in a program that sets one; DefaultFloor for gcPercent <= 0 (a program
// without collections has no goal to trim to).
func Floor(gcPercent int) uint64 {
	if gcPercent <= 0 {
		return DefaultFloor
	}
	return DefaultFloor * uint64(gcPercent) / 100
}

const goalMetric = "/gc/heap/goal:bytes"

// DefaultRetry is how long a Trimmer waits before trimming a heap goal that has not grown.
const DefaultRetry = 30 * time.Second

// A Trimmer decides when a trim pays. It is not safe for concurrent use.
type Trimmer struct {
	floor  uint64
	retry  time.Duration
	after  uint64    // the heap goal right after the last trim
	last   time.Time // when the last trim was
	sample []metrics.Sample
}

// New returns a Trimmer that leaves heap goals up to floor bytes alone and trims a goal that
// has not grown 1.5x since the last trim only once retry has passed since it.
func New(floor uint64, retry time.Duration) *Trimmer {
	return &Trimmer{floor: floor, retry: retry, sample: []metrics.Sample{{Name: goalMetric}}}
}

// Check trims if the heap goal is above the floor and either above 1.5 times the goal after
// the last trim or retry after it. It reports whether it trimmed and the heap goal before and
// after.
func (t *Trimmer) Check(now time.Time) (trimmed bool, before, after uint64) {
	before = t.goal()
	if before <= t.floor || (before <= t.after+t.after/2 && now.Sub(t.last) < t.retry) {
		return false, before, before
	}
	// The first collection moves what sync.Pools hold to their victim caches, the one inside
	// FreeOSMemory frees it; FreeOSMemory then returns all free pages.
	runtime.GC()
	debug.FreeOSMemory()
	t.after, t.last = t.goal(), now
	return true, before, t.after
}

func (t *Trimmer) goal() uint64 {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0 // a runtime without the metric: never trim
	}
	return t.sample[0].Value.Uint64()
}

// Run calls Check every period until ctx ends and logs each trim at debug level.
func (t *Trimmer) Run(ctx context.Context, period time.Duration, log *slog.Logger) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		if trimmed, before, after := t.Check(start); trimmed {
			log.Debug("returned free heap memory to the OS", "heap_goal_before", before, "heap_goal_after", after, "took", time.Since(start))
		}
	}
}
