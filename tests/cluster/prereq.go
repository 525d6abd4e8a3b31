package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// clusterBinaries are the pinned binaries a cluster runs, relative to Config.BinDir.
var clusterBinaries = []string{
	"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl",
	"containerd", "containerd-shim-runc-v2", "ctr", "runc",
	"cni/bridge", "cni/host-local", "cni/loopback", "cni/portmap",
}

// hostCommands are the machine's own programs the harness and the nodes run, with the Debian
// package that provides each.
var hostCommands = []struct{ name, pkg string }{
	{"sh", "dash"},
	{"unshare", "util-linux"},
	{"nsenter", "util-linux"},
	{"mount", "mount"},
	{"iptables", "iptables"}, // kube-proxy and the portmap plugin, inside each node
}

// ErrMissingPrerequisite is wrapped by Start's error when the machine lacks something the
// cluster needs.
var ErrMissingPrerequisite = errors.New("missing prerequisite")

// checkPrerequisites says what is missing and how to get it, before anything is started.
func checkPrerequisites(cfg Config) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("%w: the test cluster needs root (namespaces, mounts, cgroups); run as root", ErrMissingPrerequisite))
	}
	for _, b := range clusterBinaries {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s not found in %s; run `make tools` to build the pinned test binaries", ErrMissingPrerequisite, b, cfg.BinDir))
		}
	}
	for _, img := range cfg.Images {
		if _, err := os.Stat(img); err != nil {
			errs = append(errs, fmt.Errorf("%w: image archive %s not found; run `make images`", ErrMissingPrerequisite, img))
		}
	}
	for _, c := range hostCommands {
		if _, err := exec.LookPath(c.name); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s not found in PATH; install it with `apt-get install %s` (or run `make deps`)", ErrMissingPrerequisite, c.name, c.pkg))
		}
	}
	return errors.Join(errs...)
}
