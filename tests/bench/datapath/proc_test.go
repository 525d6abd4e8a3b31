package datapath

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/tests/bench/hostcpu"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, which Linux fixes at
// 100 for what it reports to user space whatever the kernel's own tick rate.
const userHZ = 100

// podPIDs returns the processes of a pod's containers, found by its UID in their cgroup path (the kubelet's
// cgroupfs driver names a pod's cgroup pod<uid>; the systemd driver writes the dashes as
// underscores). The test process sees every container's processes: the pods' PID namespaces
// are children of its own.
func podPIDs(uid string) ([]int, error) {
	marks := []string{"/pod" + uid + "/", "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil {
			continue // exited meanwhile
		}
		// The sandbox's pause process shares the pod's cgroup but is no part of its proxy.
		if comm, _ := os.ReadFile(filepath.Join(d, "comm")); strings.TrimSpace(string(comm)) == "pause" {
			continue
		}
		for _, m := range marks {
			if strings.Contains(string(cg), m) {
				pid, _ := strconv.Atoi(filepath.Base(d))
				pids = append(pids, pid)
				break
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no process of pod %s found in /proc (by its cgroup)", uid)
	}
	return pids, nil
}

// cpuTime is the user plus system CPU time that processes have used so far.
func cpuTime(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		_, t, err := procCPU(pid)
		if err != nil {
			return 0, err
		}
		total += t
	}
	return total, nil
}

// procCPU is a process's command name and the user plus system CPU time it has used so far.
func procCPU(pid int) (string, time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, fmt.Errorf("reading the CPU time of process %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: count fields after it.
	open, end := strings.IndexByte(string(stat), '('), strings.LastIndexByte(string(stat), ')')
	if open < 0 || end < open {
		return "", 0, fmt.Errorf("/proc/%d/stat: no (name) in %q", pid, stat)
	}
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 13 {
		return "", 0, fmt.Errorf("/proc/%d/stat: %d fields after the name; want at least 13", pid, len(f))
	}
	// Fields 14 (utime) and 15 (stime) of proc(5); f[0] is field 3.
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return "", 0, fmt.Errorf("/proc/%d/stat: CPU time %q: %w", pid, s, err)
		}
		ticks += n
	}
	return string(stat[open+1 : end]), time.Duration(ticks) * time.Second / userHZ, nil
}

// allCPU is every process's name and CPU time so far, by PID; processes that exit while it
// reads are left out.
func allCPU() map[int]procTime {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	out := make(map[int]procTime, len(dirs))
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if name, t, err := procCPU(pid); err == nil {
			out[pid] = procTime{name, t}
		}
	}
	return out
}

type procTime struct {
	name string
	cpu  time.Duration
}

// busiest names the n processes that used the most CPU between two allCPU snapshots, as
// "name[pid] ms", for telling what kept the machine busy.
func busiest(before, after map[int]procTime, n int) string {
	type use struct {
		pid int
		procTime
	}
	var uses []use
	for pid, a := range after {
		if d := a.cpu - before[pid].cpu; d > 0 {
			uses = append(uses, use{pid, procTime{a.name, d}})
		}
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].cpu > uses[j].cpu })
	var parts []string
	for _, u := range uses[:min(n, len(uses))] {
		parts = append(parts, fmt.Sprintf("%s[%d] %dms", u.name, u.pid, u.cpu.Milliseconds()))
	}
	return strings.Join(parts, ", ")
}

// rss is the resident set size of processes (VmRSS), in bytes.
func rss(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("reading the RSS of process %d: %w", pid, err)
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					f.Close()
					return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, rest, err)
				}
				total += kb * 1024
			}
		}
		f.Close()
	}
	return total, nil
}

// pss is the proportional set size of processes (Pss of smaps_rollup), in bytes: resident
// memory with each shared page divided among the processes sharing it, so that nginx's
// master and workers, which share most of their pages, are not counted three times.
func pss(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			return 0, fmt.Errorf("reading the PSS of process %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/smaps_rollup: Pss %q: %w", pid, rest, err)
				}
				total += kb * 1024
			}
		}
	}
	return total, nil
}

// machineBusy is the fraction of the machine's CPU time (all cores) spent not idle over d,
// with the processes that used most of it.
func machineBusy(d time.Duration) (float64, string, error) {
	procs := allCPU()
	a, err := hostcpu.Read()
	if err != nil {
		return 0, "", err
	}
	time.Sleep(d)
	b, err := hostcpu.Read()
	if err != nil {
		return 0, "", err
	}
	return hostcpu.Busy(a, b), busiest(procs, allCPU(), 3), nil
}
