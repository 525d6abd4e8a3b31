package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Node is one worker machine of the cluster.
type Node struct {
	// Name is the Kubernetes node name (node-1, node-2, ...).
	Name string
	// IP is the node's address on the fabric (its InternalIP).
	IP net.IP
	// PodCIDR is the range the node's bridge CNI assigns pod IPs from.
	PodCIDR *net.IPNet

	sb  *sandbox
	dir string
}

// hostMountpoints are the standard node paths that each node gets a private copy of through
// a bind mount in its own mount namespace. Charts use them as hostPath volumes (the CNI config
// and binaries, /var/run/ztunnel), so every node must see its own. A bind mount needs an
// existing mount point: the missing ones are created on the machine as empty directories.
var hostMountpoints = []struct{ dir, path string }{
	{"run", "/run"},
	{"log", "/var/log"},
	{"kubelet", "/var/lib/kubelet"},
	{"cni-state", "/var/lib/cni"},
	{"cni-conf", "/etc/cni"},
	{"cni-bin", "/opt/cni"},
}

// kernelSysctls are the VM-wide sysctls the kubelet insists on. It only writes them when it
// reads a different value, so each node sees files with the expected values bound over them
// and the machine's real settings are never touched.
var kernelSysctls = map[string]string{
	"/proc/sys/vm/overcommit_memory":      "1",
	"/proc/sys/vm/panic_on_oom":           "0",
	"/proc/sys/kernel/panic":              "10",
	"/proc/sys/kernel/panic_on_oops":      "1",
	"/proc/sys/kernel/keys/root_maxkeys":  "1000000",
	"/proc/sys/kernel/keys/root_maxbytes": "25000000",
}

// prepareNode writes the node's configuration and makes its private mounts.
func (c *Cluster) prepareNode(ctx context.Context, n *Node) error {
	for _, m := range hostMountpoints {
		if err := os.MkdirAll(filepath.Join(n.dir, m.dir), 0o755); err != nil {
			return fmt.Errorf("creating %s of %s: %w", m.dir, n.Name, err)
		}
		if err := os.MkdirAll(m.path, 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", m.path, err)
		}
	}
	for _, d := range []string{"cni-conf/net.d", "cni-bin/bin", "sysctl", "containerd"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return fmt.Errorf("creating %s of %s: %w", d, n.Name, err)
		}
	}
	// A bpffs of the node's own, for the node agent's pinned eBPF links.
	script := []string{"set -e", "mount -t bpf bpf /sys/fs/bpf"}
	for _, m := range hostMountpoints {
		script = append(script, fmt.Sprintf("mount --bind %q %q", filepath.Join(n.dir, m.dir), m.path))
	}
	for path, value := range kernelSysctls {
		f := filepath.Join(n.dir, "sysctl", strings.ReplaceAll(strings.TrimPrefix(path, "/proc/sys/"), "/", "."))
		if err := os.WriteFile(f, []byte(value+"\n"), 0o644); err != nil {
			return fmt.Errorf("writing sysctl stand-in: %w", err)
		}
		script = append(script, fmt.Sprintf("mount --bind %q %q", f, path))
	}
	if err := run(ctx, n.sb.command("sh", "-c", strings.Join(script, "\n"))); err != nil {
		return fmt.Errorf("mounting node directories of %s: %w", n.Name, err)
	}
	files := map[string]string{
		"containerd.toml":                   c.containerdConfig(n),
		"cni-conf/net.d/10-bridge.conflist": cniConfig(n),
		"kubelet.yaml":                      c.kubeletConfig(n),
		"kube-proxy.yaml":                   c.kubeProxyConfig(n),
		// No cluster DNS: pods get a resolver on the fabric that answers nothing, so lookups
		// fail fast instead of leaking to the machine's resolvers.
		"resolv.conf": "nameserver " + fabricGateway.String() + "\noptions timeout:1 attempts:1\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(n.dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("writing %s of %s: %w", name, n.Name, err)
		}
	}
	if err := c.pki.issue(n.Name, "system:node:"+n.Name, []string{"system:nodes"}, nil, []net.IP{n.IP}, false); err != nil {
		return err
	}
	_, err := c.pki.kubeconfig(n.Name, fmt.Sprintf("https://%s:%d", controlPlaneIP, apiserverPort))
	return err
}

// containerdSocket is the node's containerd socket as seen from the test process.
func (n *Node) containerdSocket() string {
	return filepath.Join(n.dir, "run", "containerd", "containerd.sock")
}

// startContainerd starts containerd and imports the images once its socket answers.
func (c *Cluster) startContainerd(ctx context.Context, n *Node) error {
	cmd := n.sb.command(filepath.Join(c.cfg.BinDir, "containerd"), "--config", filepath.Join(n.dir, "containerd.toml"))
	// containerd finds its shim through PATH: the pinned shim must come first.
	cmd.Env = append(os.Environ(), "PATH="+c.cfg.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	p, err := startProcess(n.Name+"-containerd", cmd, c.logPath(n.Name+"-containerd"))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	err = poll(ctx, 30*time.Second, func() (bool, error) {
		if done, _ := p.exited(); done {
			return false, p.failure()
		}
		_, err := os.Stat(n.containerdSocket())
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for containerd on %s: %w", n.Name, err)
	}
	return c.importImages(ctx, n, c.cfg.Images...)
}

// importImages loads image archives into the node's containerd, where the kubelet finds them.
func (c *Cluster) importImages(ctx context.Context, n *Node, archives ...string) error {
	for _, a := range archives {
		cmd := exec.CommandContext(ctx, filepath.Join(c.cfg.BinDir, "ctr"), "--address", n.containerdSocket(),
			"-n", "k8s.io", "images", "import", "--no-unpack=false", a)
		if err := run(ctx, cmd); err != nil {
			return fmt.Errorf("importing %s into %s: %w", a, n.Name, err)
		}
	}
	return nil
}

// startKubelet starts the node's kubelet and kube-proxy.
func (c *Cluster) startKubelet(n *Node) error {
	args := []string{
		"--config=" + filepath.Join(n.dir, "kubelet.yaml"),
		"--kubeconfig=" + c.pki.path(n.Name+".kubeconfig"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
		"--v=1",
	}
	cmd := n.sb.command(filepath.Join(c.cfg.BinDir, "kubelet"), args...)
	cmd.Env = append(os.Environ(), "PATH="+c.cfg.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	p, err := startProcess(n.Name+"-kubelet", cmd, c.logPath(n.Name+"-kubelet"))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	cmd = n.sb.command(filepath.Join(c.cfg.BinDir, "kube-proxy"), "--config="+filepath.Join(n.dir, "kube-proxy.yaml"))
	p, err = startProcess(n.Name+"-kube-proxy", cmd, c.logPath(n.Name+"-kube-proxy"))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}
