package cluster

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Usage is what the cluster's processes (control plane, nodes, containers) cost right now.
type Usage struct {
	// Processes is how many processes run in the cluster's cgroups.
	Processes int
	// PSSBytes is their proportional set size: resident memory with shared pages divided
	// among the processes sharing them, so the sum does not count shared pages twice.
	PSSBytes int64
}

// Usage measures the cluster's processes.
func (c *Cluster) Usage() Usage {
	var u Usage
	for _, pid := range c.cg.pids() {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
		if err != nil {
			continue // exited meanwhile
		}
		u.Processes++
		s := bufio.NewScanner(f)
		for s.Scan() {
			if rest, ok := strings.CutPrefix(s.Text(), "Pss:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				u.PSSBytes += kb * 1024
			}
		}
		f.Close()
	}
	return u
}
