package memtrim

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// held keeps test allocations live where the compiler cannot drop them.
var held [][]byte

func burst(n int) {
	for range n {
		held = append(held, make([]byte, 1<<20))
	}
	runtime.GC() // marks the burst live: the goal grows to twice its size
}

func released() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// now is the clock of the tests: no retry is due unless a test moves it.
var now = time.Now()

func TestTrimsAfterBurst(t *testing.T) {
	tr := New(DefaultFloor, DefaultRetry)
	burst(64)
	held = nil
	rel := released()
	trimmed, before, after := tr.Check(now)
	if !trimmed {
		t.Fatalf("Check after a 64 MiB burst: not trimmed (heap goal %d)", before)
	}
	if before < 64<<20 || after > 32<<20 {
		t.Errorf("heap goal %d before and %d after the trim; want at least 64 MiB before and at most 32 MiB after", before, after)
	}
	if got := released(); got < rel+32<<20 {
		t.Errorf("released heap %d bytes after the trim, %d before; want at least 32 MiB more", got, rel)
	}
	if trimmed, before, _ := tr.Check(now); trimmed {
		t.Errorf("Check right after a trim trimmed again (heap goal %d)", before)
	}
}

func TestOneTrimPerGrowth(t *testing.T) {
	tr := New(DefaultFloor, DefaultRetry)
	burst(64)
	defer func() { held = nil }()
	if trimmed, before, _ := tr.Check(now); !trimmed {
		t.Fatalf("Check after the heap grew to 64 MiB live: not trimmed (heap goal %d)", before)
	}
	// The heap stays this large: further looks must not collect again.
	for range 3 {
		if trimmed, before, _ := tr.Check(now); trimmed {
			t.Fatalf("Check with an unchanged large live heap trimmed again (heap goal %d)", before)
		}
	}
	burst(64) // twice as large now: worth one more trim
	if trimmed, before, _ := tr.Check(now); !trimmed {
		t.Errorf("Check after the live heap doubled: not trimmed (heap goal %d)", before)
	}
}

// A trim in the middle of a burst sees the burst live; once the burst is over, the retry
// returns its memory although the goal has not grown since.
func TestRetryAfterBurstEnds(t *testing.T) {
	tr := New(DefaultFloor, DefaultRetry)
	burst(64)
	if trimmed, before, _ := tr.Check(now); !trimmed {
		t.Fatalf("Check during the burst: not trimmed (heap goal %d)", before)
	}
	held = nil
	if trimmed, before, _ := tr.Check(now.Add(DefaultRetry / 2)); trimmed {
		t.Fatalf("Check before the retry is due trimmed (heap goal %d)", before)
	}
	trimmed, before, after := tr.Check(now.Add(DefaultRetry))
	if !trimmed {
		t.Fatalf("Check once the retry is due: not trimmed (heap goal %d)", before)
	}
	if after > 32<<20 {
		t.Errorf("heap goal %d after the burst ended and the retry trimmed; want at most 32 MiB", after)
	}
}

func TestFloor(t *testing.T) {
	tr := New(1<<40, DefaultRetry)
	burst(16)
	held = nil
	if trimmed, before, _ := tr.Check(now); trimmed {
		t.Errorf("Check with the heap goal %d under the floor trimmed", before)
	}
}

// Floor follows the runtime: at GOGC=50 a program with little live data gets a heap goal of
// half the default minimum, not 4 MiB.
func TestFloorScalesWithGOGC(t *testing.T) {
	for _, tc := range []struct {
		gcPercent int
		want      uint64
	}{{100, DefaultFloor}, {50, 2 << 20}, {200, 8 << 20}, {-1, DefaultFloor}} {
		if got := Floor(tc.gcPercent); got != tc.want {
			t.Errorf("Floor(%d) = %d, want %d", tc.gcPercent, got, tc.want)
		}
	}
	defer debug.SetGCPercent(debug.SetGCPercent(50))
	runtime.GC()
	s := []metrics.Sample{{Name: goalMetric}}
	metrics.Read(s)
	if goal := s[0].Value.Uint64(); goal < Floor(50) || goal >= DefaultFloor {
		t.Errorf("heap goal at GOGC=50 with a small live heap = %d; want at least Floor(50) = %d and below %d", goal, Floor(50), DefaultFloor)
	}
}
