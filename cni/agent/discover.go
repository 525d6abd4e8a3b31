package agent

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cgroupMarkers are the cgroup path fragments of a pod with this UID, for the kubelet's
// cgroupfs driver (pod<uid>) and its systemd driver (pod<uid with underscores>.slice).
func cgroupMarkers(uid string) []string {
	return []string{"/pod" + uid + "/", "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/"}
}

// findPodProcess scans procRoot (/proc) for a process in the pod's cgroup and returns its
// PID. It is how the agent finds the netns of pods that were running before it started: the
// container runtime's own netns files are named after sandbox IDs, not pods.
func findPodProcess(procRoot, uid string) (int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	markers := cgroupMarkers(uid)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(procRoot, e.Name(), "cgroup"))
		if err != nil {
			continue // gone already
		}
		found := false
		sc := bufio.NewScanner(f)
		for sc.Scan() && !found {
			line := sc.Text() + "/"
			for _, m := range markers {
				if strings.Contains(line, m) {
					found = true
				}
			}
		}
		f.Close()
		if found {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process of pod %s under %s: %w", uid, procRoot, fs.ErrNotExist)
}

// selfPID is this process: a CNI call from it (tests) names a path in our own mount namespace.
var selfPID = os.Getpid()
