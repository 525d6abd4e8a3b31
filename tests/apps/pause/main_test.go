//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// TestMain lets the test binary stand in for a child that exits at once.
func TestMain(m *testing.M) {
	if os.Getenv("PAUSE_TEST_CHILD") == "1" {
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// buildPause builds the command the way images are built: static, no cgo.
func buildPause(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("building pause needs the go tool: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestExitsZeroOnSignal(t *testing.T) {
	bin := buildPause(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := startReady(t, bin)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("pause after %s: %v, want exit status 0", sig, err)
				}
			case <-time.After(testTimeout):
				cmd.Process.Kill()
				<-done
				t.Fatalf("pause still running %s after %s", testTimeout, sig)
			}
		})
	}
}

// startReady starts pause and returns once its handlers are in place. A
// signal sent earlier would find Go's default action (exit by signal). The
// child inherits SIGINT ignored, and Go leaves an inherited SIG_IGN for SIGINT
// alone until signal.Notify asks for it; main asks for it last, so SIGINT
// showing as caught in /proc means every handler is ready.
func startReady(t *testing.T, bin string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin)
	signal.Ignore(syscall.SIGINT)
	err := cmd.Start()
	signal.Reset(syscall.SIGINT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	deadline := time.Now().Add(testTimeout)
	for !caught(t, cmd.Process.Pid, syscall.SIGINT) {
		if time.Now().After(deadline) {
			t.Fatalf("pause did not catch SIGINT within %s", testTimeout)
		}
		time.Sleep(time.Millisecond) // poll interval, not a wait for an event
	}
	return cmd
}

// caught reports whether process pid has a handler for sig.
func caught(t *testing.T, pid int, sig syscall.Signal) bool {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading signal state: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if mask, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(mask), 16, 64)
			if err != nil {
				t.Fatalf("parsing %q: %v", line, err)
			}
			return bits&(1<<(sig-1)) != 0
		}
	}
	t.Fatalf("no SigCgt in /proc/%d/status", pid)
	return false
}

func TestReap(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PAUSE_TEST_CHILD=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for n := 0; n == 0; n = reap() {
		if time.Now().After(deadline) {
			t.Fatalf("child %d not reaped after %s", cmd.Process.Pid, testTimeout)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for an event
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) = %v, want ESRCH once reaped", cmd.Process.Pid, err)
	}
}
