package agent

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestMain fails the package when its tests leave goroutines or file descriptors behind.
func TestMain(m *testing.M) {
	goroutines, fds := runtime.NumGoroutine(), openFds()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for (runtime.NumGoroutine() > goroutines || openFds() > fds) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > goroutines {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "leaked %d goroutines:\n%s\n", n-goroutines, buf[:runtime.Stack(buf, true)])
			code = 1
		}
		if n := openFds(); n > fds {
			fmt.Fprintf(os.Stderr, "leaked %d file descriptors\n", n-fds)
			code = 1
		}
	}
	os.Exit(code)
}

func openFds() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}
