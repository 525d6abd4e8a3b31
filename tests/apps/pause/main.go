//go:build unix

// Command pause is PID 1 of a Kubernetes pod sandbox: it holds the pod's
// namespaces open, reaps zombie children re-parented to it, and exits 0 on
// SIGINT or SIGTERM. It replaces registry.k8s.io/pause in the test cluster so
// that the cluster needs no image pulled from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	// SIGINT goes last: the test takes SIGINT being caught as the sign that
	// every handler is in place.
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Signals coalesce: one SIGCHLD may stand for many exits.
		reap()
	}
}

// reap waits for every child that has exited and returns how many there were.
func reap() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return n
		}
		n++
	}
}
