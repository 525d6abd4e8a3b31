package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// state is what a cluster records about itself on disk, so that a later harness start can
// clean up after a test process that died without calling Stop (killed, or timed out).
type state struct {
	Owner         int      `json:"owner"`
	OwnerStart    string   `json:"ownerStart"`
	CgroupMounts  []string `json:"cgroupMounts"`
	CgroupPath    string   `json:"cgroupPath"`
	CgroupCreated []string `json:"cgroupCreated"`
}

const stateFile = "state.json"

func writeState(dir string, s state) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding cluster state: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o644); err != nil {
		return fmt.Errorf("writing cluster state: %w", err)
	}
	return nil
}

// processStart is a process's start time in clock ticks since boot, which tells a live owner
// from a reused PID.
func processStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name may contain spaces: fields are counted after its closing parenthesis.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}

// ReapStale removes the clusters under workDir whose owning process is gone: it kills their
// processes through their cgroups, removes the cgroups and deletes their files.
func ReapStale(workDir string) error {
	entries, err := os.ReadDir(workDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing clusters: %w", err)
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(workDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, stateFile))
		if err != nil {
			continue // being created, or not a cluster
		}
		var s state
		if err := json.Unmarshal(b, &s); err != nil {
			errs = append(errs, fmt.Errorf("reading %s: %w", dir, err))
			continue
		}
		if start := processStart(s.Owner); start != "" && start == s.OwnerStart {
			continue // owner alive
		}
		t := &cgroupTree{mounts: s.CgroupMounts, path: s.CgroupPath, created: s.CgroupCreated}
		if err := t.destroy(30 * time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := removeAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeAll deletes a cluster directory.
func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}
