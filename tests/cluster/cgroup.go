package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupTree is one cgroup path (relative to each hierarchy's root) created in every cgroup
// hierarchy mounted on the machine. The kubelet takes one cgroupRoot for all hierarchies, so
// the path is the same everywhere; it is placed under the test process's own memory cgroup
// (the deepest one it sits in) so that limits set around the test process still apply.
type cgroupTree struct {
	// mounts are the mount points of every cgroup hierarchy (v1 controllers, named v1
	// hierarchies and the cgroup2 one).
	mounts []string
	// path is the tree's path inside each hierarchy, e.g. /process_api/x/ambit-abc.
	path string
	// created lists the ancestors of path that did not exist and were made for the tree
	// (hierarchies where the test process sits higher up); destroy removes them too.
	created []string
}

// newCgroupTree picks the path for a tree named name and creates it in every hierarchy.
func newCgroupTree(name string) (*cgroupTree, error) {
	mounts, base, err := cgroupLayout()
	if err != nil {
		return nil, err
	}
	t := &cgroupTree{mounts: mounts, path: filepath.Join(base, name)}
	for _, m := range mounts {
		for d := filepath.Dir(filepath.Join(m, t.path)); d != m; d = filepath.Dir(d) {
			if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
				t.created = append(t.created, d)
			}
		}
	}
	if err := t.mkdir(""); err != nil {
		return nil, errors.Join(err, t.destroy(time.Second))
	}
	return t, nil
}

// cgroupLayout reads the cgroup mounts and the deepest cgroup path of this process.
func cgroupLayout() (mounts []string, base string, err error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, "", fmt.Errorf("reading mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		// Fields: id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fs := fields[sep+1]; fs == "cgroup" || fs == "cgroup2" {
			mounts = append(mounts, fields[4])
		}
	}
	if len(mounts) == 0 {
		return nil, "", errors.New("no cgroup hierarchy is mounted: the test cluster needs cgroups (mount them under /sys/fs/cgroup)")
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, "", fmt.Errorf("reading own cgroups: %w", err)
	}
	base = "/"
	for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && len(parts[2]) > len(base) {
			base = parts[2]
		}
	}
	return mounts, base, nil
}

// dirs returns the directory of sub (relative to the tree) in every hierarchy.
func (t *cgroupTree) dirs(sub string) []string {
	out := make([]string, 0, len(t.mounts))
	for _, m := range t.mounts {
		out = append(out, filepath.Join(m, t.path, sub))
	}
	return out
}

// mkdir creates sub in every hierarchy. cpuset cgroups start with no CPUs or memory nodes,
// so the new ones copy their parent's.
func (t *cgroupTree) mkdir(sub string) error {
	for _, d := range t.dirs(sub) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating cgroup: %w", err)
		}
	}
	for _, m := range t.mounts {
		if !strings.HasSuffix(m, "/cpuset") {
			continue
		}
		rel := strings.Split(strings.Trim(filepath.Join(t.path, sub), "/"), "/")
		for i := range rel {
			d := filepath.Join(append([]string{m}, rel[:i+1]...)...)
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				cur, _ := os.ReadFile(filepath.Join(d, f))
				if strings.TrimSpace(string(cur)) != "" {
					continue
				}
				parent, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
				if err != nil {
					return fmt.Errorf("reading cpuset: %w", err)
				}
				if err := os.WriteFile(filepath.Join(d, f), parent, 0o644); err != nil {
					return fmt.Errorf("setting %s of %s: %w", f, d, err)
				}
			}
		}
	}
	return nil
}

// procsFiles lists the cgroup.procs files of sub in every hierarchy, for a shell that moves
// itself into the cgroup before it execs a program.
func (t *cgroupTree) procsFiles(sub string) []string {
	out := t.dirs(sub)
	for i := range out {
		out[i] = filepath.Join(out[i], "cgroup.procs")
	}
	return out
}

// pids returns every process in the tree, in any hierarchy.
func (t *cgroupTree) pids() []int {
	seen := map[int]bool{}
	var out []int
	for _, d := range t.dirs("") {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer f.Close()
			s := bufio.NewScanner(f)
			for s.Scan() {
				if pid, err := strconv.Atoi(s.Text()); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// destroy kills every process in the tree and removes its cgroups, deepest first.
func (t *cgroupTree) destroy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := t.pids()
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s survived SIGKILL", pids, t.path)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var errs []error
	for _, d := range t.dirs("") {
		var all []string
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		// Deepest first: a cgroup can only be removed once it has no children.
		slices.SortFunc(all, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, p := range all {
			if err := removeCgroup(p, deadline); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// created is ordered deepest first within each hierarchy.
	for _, d := range t.created {
		if err := removeCgroup(d, deadline); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroup removes one cgroup directory, retrying while the kernel still counts exiting
// tasks in it.
func removeCgroup(p string, deadline time.Time) error {
	for {
		err := syscall.Rmdir(p)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", p, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
