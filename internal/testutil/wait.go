package testutil

import (
	"testing"
	"time"
)

// pollInterval is how often WaitFor and the leak checks look again.
const pollInterval = 10 * time.Millisecond

// WaitFor polls cond until it holds, and fails the test (t.Fatalf, naming what) if it still
// does not hold after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(pollInterval)
	}
}
