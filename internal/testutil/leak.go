package testutil

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"
)

// CheckGoroutines fails the test (t.Errorf, with every goroutine's stack) if, timeout after
// the test and its other cleanups end, more goroutines run than when CheckGoroutines was
// called. Call it first in the test, so that its cleanup runs after every other.
func CheckGoroutines(t testing.TB, timeout time.Duration) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(timeout)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				t.Errorf("goroutines: got %d, want at most %d (leaked):\n%s", runtime.NumGoroutine(), before, stacks())
				return
			}
			time.Sleep(pollInterval)
		}
	})
}

// WaitGoroutines fails the test now (t.Fatalf, with every goroutine's stack) unless, within
// timeout, at most before goroutines run: for a check at a point of the test, such as after a
// component's Stop, where CheckGoroutines would check only at the end.
func WaitGoroutines(t testing.TB, before int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: got %d, want <= %d\n%s", runtime.NumGoroutine(), before, stacks())
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // yield between polls: goroutines that are ending need a moment to run
	}
}

// CheckMain runs the package's tests and returns the exit code for TestMain to pass to
// os.Exit: m.Run's code, or 1 if the tests passed but, grace after they ended, more goroutines
// or file descriptors are open than before they started. It reports leaks on stderr.
//
//	func TestMain(m *testing.M) { os.Exit(testutil.CheckMain(m, 5*time.Second)) }
//
// A fuzzing run (-fuzz) is not checked: the fuzzing engine keeps its own goroutines, pipes and
// shared memory open.
func CheckMain(m *testing.M, grace time.Duration) int {
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	return checkMain(m.Run, grace, os.Stderr)
}

func checkMain(run func() int, grace time.Duration, stderr io.Writer) int {
	goroutines, fds := ownGoroutines(), OpenFds()
	code := run()
	if code != 0 {
		return code
	}
	deadline := time.Now().Add(grace)
	for (ownGoroutines() > goroutines || OpenFds() > fds) && time.Now().Before(deadline) {
		time.Sleep(pollInterval)
	}
	if n := ownGoroutines(); n > goroutines {
		fmt.Fprintf(stderr, "leaked %d goroutines:\n%s\n", n-goroutines, stacks())
		code = 1
	}
	if n := OpenFds(); n > fds {
		fmt.Fprintf(stderr, "leaked %d file descriptors\n", n-fds)
		code = 1
	}
	return code
}

// ownGoroutines counts the goroutines but those the standard library starts once and keeps
// (os/signal's loop, started by the first signal.Notify of any test).
func ownGoroutines() int {
	return runtime.NumGoroutine() - bytes.Count(stacks(), []byte("\nos/signal.loop()"))
}

// OpenFds returns how many file descriptors this process has open.
func OpenFds() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}

// stacks returns the stacks of all goroutines (up to 1 MiB).
func stacks() []byte {
	buf := make([]byte, 1<<20)
	return buf[:runtime.Stack(buf, true)]
}
