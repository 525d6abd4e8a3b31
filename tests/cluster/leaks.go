package cluster

import (
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// Snapshot is the machine-wide state that a cluster must leave exactly as it found it: the
// root namespaces' mounts, links, routes, rules and packet filters, and global sysctls.
type Snapshot struct {
	Mounts    []string
	Links     []string
	Routes    []string
	Rules     []string
	Netfilter map[string]string
	Sysctls   map[string]string
}

// watchedSysctls are machine-wide settings a kubelet, kube-proxy or CNI plugin would be
// tempted to change.
var watchedSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/ipv4/conf/all/rp_filter",
	"net/netfilter/nf_conntrack_max", "net/bridge/bridge-nf-call-iptables",
	"fs/inotify/max_user_instances", "fs/inotify/max_user_watches",
}

// TakeSnapshot reads the machine-wide state from the calling process's namespaces (the root
// ones, for a test process).
func TakeSnapshot() (Snapshot, error) {
	s := Snapshot{Netfilter: map[string]string{}, Sysctls: map[string]string{}}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return s, fmt.Errorf("reading mounts: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			s.Mounts = append(s.Mounts, f[4]+" "+f[3])
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return s, fmt.Errorf("listing links: %w", err)
	}
	for _, i := range ifs {
		s.Links = append(s.Links, i.Name)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return s, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, r.String())
	}
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return s, fmt.Errorf("listing rules: %w", err)
	}
	for _, r := range rules {
		s.Rules = append(s.Rules, r.String())
	}
	for _, cmd := range [][]string{{"nft", "list", "ruleset"}, {"iptables-save"}, {"ip6tables-save"}} {
		if _, err := exec.LookPath(cmd[0]); err != nil {
			continue
		}
		out, err := exec.Command(cmd[0], cmd[1:]...).Output()
		if err != nil {
			return s, fmt.Errorf("running %s: %w", cmd[0], err)
		}
		s.Netfilter[cmd[0]] = stripComments(string(out))
	}
	for _, k := range watchedSysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			s.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	slices.Sort(s.Mounts)
	slices.Sort(s.Links)
	slices.Sort(s.Routes)
	slices.Sort(s.Rules)
	return s, nil
}

// stripComments drops iptables-save's comment lines, which carry a timestamp.
func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Diff lists what changed between s and after.
func (s Snapshot) Diff(after Snapshot) []string {
	var out []string
	list := func(what string, a, b []string) {
		for _, x := range b {
			if !slices.Contains(a, x) {
				out = append(out, fmt.Sprintf("new %s: %s", what, x))
			}
		}
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, fmt.Sprintf("missing %s: %s", what, x))
			}
		}
	}
	list("mount in the root mount namespace", s.Mounts, after.Mounts)
	list("link in the root network namespace", s.Links, after.Links)
	list("route in the root network namespace", s.Routes, after.Routes)
	list("rule in the root network namespace", s.Rules, after.Rules)
	for _, k := range slices.Sorted(maps.Keys(s.Netfilter)) {
		if s.Netfilter[k] != after.Netfilter[k] {
			out = append(out, fmt.Sprintf("%s output of the root network namespace changed:\nbefore:\n%s\nafter:\n%s", k, s.Netfilter[k], after.Netfilter[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Sysctls)) {
		if s.Sysctls[k] != after.Sysctls[k] {
			out = append(out, fmt.Sprintf("sysctl %s changed from %s to %s", k, s.Sysctls[k], after.Sysctls[k]))
		}
	}
	return out
}

// Remains lists what a stopped cluster left behind: processes in its cgroups or in any of its
// network namespaces, its cgroups, and its directory.
func (c *Cluster) Remains() []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		// A killed process whose parent has not collected it yet still names its old cgroup
		// and namespace, but holds nothing else: its parent (init, for orphans) reaps it.
		if zombie(p) {
			continue
		}
		if ns, err := os.Readlink(p + "/ns/net"); err == nil && slices.Contains(c.netnsIDs, ns) {
			out = append(out, fmt.Sprintf("process %s still in the cluster's network namespace %s", filepath.Base(p), ns))
		}
		if cg, err := os.ReadFile(p + "/cgroup"); err == nil && strings.Contains(string(cg), "/"+c.Name+"/") {
			out = append(out, fmt.Sprintf("process %s still in the cluster's cgroups", filepath.Base(p)))
		}
	}
	if c.cg != nil {
		for _, d := range append(c.cg.dirs(""), c.cg.created...) {
			if _, err := os.Stat(d); err == nil {
				out = append(out, "cgroup "+d+" still exists")
			}
		}
	}
	if _, err := os.Stat(c.dir); err == nil {
		out = append(out, "directory "+c.dir+" still exists")
	}
	return out
}

// zombie reports whether the process at /proc/PID has exited and awaits its parent.
func zombie(proc string) bool {
	b, err := os.ReadFile(proc + "/stat")
	if err != nil {
		return true // gone
	}
	st := string(b)
	i := strings.LastIndexByte(st, ')')
	return i < 0 || i+2 >= len(st) || st[i+2] == 'Z' || st[i+2] == 'X'
}
