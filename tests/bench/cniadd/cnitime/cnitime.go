// Package cnitime times CNI plugins as the container runtime runs them. The cniadd benchmark
// installs its command (../cmd/cnitime) on a test node under the name of each plugin of the
// chain (bridge, portmap, loopback, ambit-cni), with the real plugin moved to real/<name>
// next to it. Run runs the real plugin with the same arguments, environment, stdin and
// stdout, and appends one JSON line per call to the node's log file: which plugin, which CNI
// command, for which pod and sandbox, when it started and how long the real plugin took (its
// exec included, the wrapper's own start excluded). The runtime runs the chain's plugins one
// after the other inside RunPodSandbox, so the sum over a sandbox's ADD calls is the network
// setup the kubelet waits for.
package cnitime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// LogPath is where each node's calls are recorded (the node's private /var/log).
const LogPath = "/var/log/ambit-cnitime.log"

// Call is one recorded plugin call.
type Call struct {
	Plugin      string `json:"plugin"`
	Command     string `json:"command"`
	ContainerID string `json:"containerID"`
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	StartNanos  int64  `json:"startNanos"`
	Nanos       int64  `json:"nanos"`
	ExitCode    int    `json:"exitCode"`
	// Node is the node whose log held the call; the reader sets it.
	Node string `json:"-"`
}

// Run runs the real plugin named like the program (os.Args[0]) from real/ next to the
// executable, records the call and returns the exit code to exit with.
func Run() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnitime: finding its own path:", err)
		return 1
	}
	name := filepath.Base(os.Args[0])
	real := filepath.Join(filepath.Dir(self), "real", name)
	cmd := exec.Command(real, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		fmt.Fprintf(os.Stderr, "cnitime: running %s: %v\n", real, err)
		return 1
	}
	call := Call{Plugin: name, Command: os.Getenv("CNI_COMMAND"), ContainerID: os.Getenv("CNI_CONTAINERID"),
		StartNanos: start.UnixNano(), Nanos: took.Nanoseconds(), ExitCode: code}
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			call.Namespace = v
		case "K8S_POD_NAME":
			call.Pod = v
		}
	}
	if line, err := json.Marshal(call); err == nil {
		// One write of one short line with O_APPEND: concurrent calls do not interleave.
		if f, err := os.OpenFile(LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			f.Write(append(line, '\n'))
			f.Close()
		}
	}
	return code
}
