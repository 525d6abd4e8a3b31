package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// A sandbox is a machine of the cluster: a network namespace and a private mount namespace
// held open by one long-lived process, and a cgroup of its own. Programs run in it through
// nsenter into both namespaces (not "ip netns exec", which remounts /sys and hides the cgroup
// hierarchies).
type sandbox struct {
	name   string
	cg     *cgroupTree
	holder *process
	ns     *netns.Handle
}

// moveAndExec is a shell prologue that moves the shell into the cgroups named before "--"
// and then execs the rest of its arguments, so that everything the program spawns starts
// inside the sandbox's cgroup.
const moveAndExec = `while [ "$1" != "--" ]; do echo $$ > "$1" || exit 1; shift; done; shift; exec "$@"`

// startSandbox creates the namespaces of a machine named name, in the cgroup tree's sub-cgroup
// name, with the holder's log in logDir.
func startSandbox(ctx context.Context, name string, cg *cgroupTree, logDir string) (*sandbox, error) {
	if err := cg.mkdir(name); err != nil {
		return nil, err
	}
	args := append([]string{"-c", moveAndExec, "sh"}, cg.procsFiles(name)...)
	args = append(args, "--", "unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity")
	holder, err := startProcess(name+"-holder", exec.Command("sh", args...), logDir+"/"+name+"-holder.log")
	if err != nil {
		return nil, err
	}
	sb := &sandbox{name: name, cg: cg, holder: holder}
	path := "/proc/" + strconv.Itoa(holder.cmd.Process.Pid) + "/ns/net"
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("reading own network namespace: %w", err)
	}
	// The holder is a shell, then unshare, then sleep, all one PID: wait for it to have
	// entered its own namespace.
	err = poll(ctx, 5*time.Second, func() (bool, error) {
		if done, _ := holder.exited(); done {
			return false, holder.failure()
		}
		l, err := os.Readlink(path)
		return err == nil && l != own, nil
	})
	if err != nil {
		holder.stop(time.Second)
		return nil, fmt.Errorf("creating namespaces of %s: %w", name, err)
	}
	if sb.ns, err = netns.Open(path); err != nil {
		holder.stop(time.Second)
		return nil, err
	}
	return sb, nil
}

// pid is the holder's PID, the target for nsenter.
func (s *sandbox) pid() int { return s.holder.cmd.Process.Pid }

// command prepares a program to run inside the sandbox: in its cgroup, its network namespace
// and its mount namespace.
func (s *sandbox) command(name string, args ...string) *exec.Cmd {
	sh := append([]string{"-c", moveAndExec, "sh"}, s.cg.procsFiles(s.name)...)
	sh = append(sh, "--", "nsenter", "-t", strconv.Itoa(s.pid()), "-m", "-n", "--", name)
	return exec.Command("sh", append(sh, args...)...)
}

// close stops the holder. Processes still in the sandbox are killed through the cgroup tree.
func (s *sandbox) close() {
	if s.ns != nil {
		s.ns.Close()
	}
	s.holder.stop(time.Second)
}

// poll calls cond until it returns true, an error, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %v", timeout)
		case <-tick.C:
		}
	}
}
