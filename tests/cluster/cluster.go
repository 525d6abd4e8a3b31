// Package cluster stands up a real Kubernetes cluster on one machine, for Ambit's end-to-end
// tests and its demo: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on a
// control-plane machine, and N nodes each running containerd, runc, a kubelet and kube-proxy,
// with the real CNI chain. Every machine is a sandbox (a network namespace, a private mount
// namespace and a cgroup subtree of its own), joined to the others by a veth fabric. Nothing is
// added to the machine's root network namespace, its sysctls or its cgroup roots, and Stop
// removes everything the cluster made.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/internal/netns"
)

// Config says what cluster to start. The zero value is completed by defaults.
type Config struct {
	// Nodes is the number of worker nodes (default 2).
	Nodes int
	// ControlPlaneOnly starts no worker node: the API server and controllers alone, for tests
	// (such as scale benchmarks) that create Node and Pod objects with no kubelet behind them.
	ControlPlaneOnly bool
	// BinDir holds the pinned binaries that `make tools` builds (default: .cache/bin at the
	// root of the Ambit module containing the working directory).
	BinDir string
	// Images are image archives imported into every node's containerd before it is Ready
	// (default: every .tar in .cache/images, which `make images` fills).
	Images []string
	// PauseImage is the sandbox image, which must be in one of Images
	// (default ambit.local/pause:dev).
	PauseImage string
	// WorkDir is where clusters keep their files (default /tmp/ambit-clusters). Each cluster
	// uses a subdirectory named after it, removed by Stop.
	WorkDir string
	// StartTimeout bounds Start (default 3 minutes).
	StartTimeout time.Duration
	// Logger receives progress lines (default: discarded).
	Logger *slog.Logger
}

// DefaultPauseImage is the sandbox image `make images` builds.
const DefaultPauseImage = "ambit.local/pause:dev"

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.ControlPlaneOnly:
		c.Nodes = 0
	case c.Nodes == 0:
		c.Nodes = 2
	}
	if !c.ControlPlaneOnly && (c.Nodes < 1 || c.Nodes > 200) {
		return c, fmt.Errorf("nodes = %d: a test cluster has 1 to 200 nodes", c.Nodes)
	}
	if c.BinDir == "" || len(c.Images) == 0 {
		root, err := ModuleRoot()
		if err != nil {
			return c, err
		}
		if c.BinDir == "" {
			c.BinDir = filepath.Join(root, ".cache", "bin")
		}
		if len(c.Images) == 0 && !c.ControlPlaneOnly {
			dir := filepath.Join(root, ".cache", "images")
			if c.Images, _ = filepath.Glob(filepath.Join(dir, "*.tar")); len(c.Images) == 0 {
				return c, fmt.Errorf("%w: no image archives in %s; run `make images`", ErrMissingPrerequisite, dir)
			}
		}
	}
	if c.PauseImage == "" {
		c.PauseImage = DefaultPauseImage
	}
	if c.WorkDir == "" {
		c.WorkDir = filepath.Join(os.TempDir(), "ambit-clusters")
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 3 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c, nil
}

// Cluster is a running test cluster.
type Cluster struct {
	// Name identifies the cluster (ambit-<random>); its cgroups and files carry it.
	Name string
	// Nodes are the worker nodes, in order.
	Nodes []*Node
	// Kubeconfig is an admin kubeconfig that works from the test machine (through a relay on
	// 127.0.0.1) for kubectl and client-go.
	Kubeconfig string
	// Client is an admin clientset for Kubeconfig.
	Client kubernetes.Interface
	// RESTConfig is the admin client configuration.
	RESTConfig *rest.Config

	cfg          Config
	dir          string
	cg           *cgroupTree
	pki          *pki
	fabric       *sandbox
	controlPlane *sandbox
	relay        *relay
	apply        *applier
	netnsIDs     []string // the sandboxes' network namespaces, as readlink shows them

	mu    sync.Mutex // guards procs
	procs []*process

	stopMu sync.Mutex // serializes Stop (tests, a signal handler and a watchdog may call it)
}

// Start brings up a cluster and returns once every node is Ready with its images imported and
// the default ServiceAccount exists. On failure it cleans up what it made and returns an error
// that names the failing piece and quotes its log.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkPrerequisites(cfg); err != nil {
		return nil, err
	}
	if err := ReapStale(cfg.WorkDir); err != nil {
		cfg.Logger.Warn("could not clean up a previous cluster", "err", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()

	suffix := make([]byte, 3)
	rand.Read(suffix)
	c := &Cluster{Name: "ambit-" + hex.EncodeToString(suffix), cfg: cfg}
	c.dir = filepath.Join(cfg.WorkDir, c.Name)
	if err := c.start(ctx); err != nil {
		if stopErr := c.Stop(context.Background()); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", stopErr))
		}
		return nil, fmt.Errorf("starting test cluster: %w", err)
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	began := time.Now()
	log := c.cfg.Logger
	if err := os.MkdirAll(filepath.Join(c.dir, "logs"), 0o755); err != nil {
		return fmt.Errorf("creating cluster dir: %w", err)
	}
	var err error
	if c.cg, err = newCgroupTree(c.Name); err != nil {
		return err
	}
	if err := writeState(c.dir, state{Owner: os.Getpid(), OwnerStart: processStart(os.Getpid()), CgroupMounts: c.cg.mounts, CgroupPath: c.cg.path, CgroupCreated: c.cg.created}); err != nil {
		return err
	}
	if c.pki, err = newPKI(filepath.Join(c.dir, "pki")); err != nil {
		return err
	}
	if err := makeControlPlanePKI(c.pki); err != nil {
		return err
	}

	if c.fabric, err = startSandbox(ctx, "fabric", c.cg, c.logDir()); err != nil {
		return err
	}
	c.recordNetNS(c.fabric)
	if err := setupFabric(c.fabric); err != nil {
		return err
	}
	if c.controlPlane, err = startSandbox(ctx, "control-plane", c.cg, c.logDir()); err != nil {
		return err
	}
	c.recordNetNS(c.controlPlane)
	if err := attach(c.fabric, c.controlPlane, controlPlaneIP, "cp"); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	log.Info("control plane starting", "cluster", c.Name, "elapsed", time.Since(began).Round(time.Millisecond))

	for i := range c.cfg.Nodes {
		n := &Node{Name: fmt.Sprintf("node-%d", i+1), IP: nodeIP(i), PodCIDR: podCIDR(i), dir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i+1))}
		if n.sb, err = startSandbox(ctx, n.Name, c.cg, c.logDir()); err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, n)
		c.recordNetNS(n.sb)
		if err := c.cg.mkdir(filepath.Join(n.Name, "pods")); err != nil {
			return err
		}
		if err := attach(c.fabric, n.sb, n.IP, fmt.Sprintf("n%d", i+1)); err != nil {
			return err
		}
		if err := c.prepareNode(ctx, n); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := routePodCIDR(c.fabric, n.PodCIDR, n.IP); err != nil {
			return err
		}
		for _, peer := range c.Nodes {
			if peer != n {
				if err := routePodCIDR(peer.sb, n.PodCIDR, n.IP); err != nil {
					return err
				}
			}
		}
	}

	if c.relay, err = startRelay(c.fabric.ns, fmt.Sprintf("%s:%d", controlPlaneIP, apiserverPort)); err != nil {
		return err
	}
	if c.Kubeconfig, err = c.pki.kubeconfig("admin", "https://"+c.relay.addr()); err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}

	// Nodes start in parallel: containerd and image import dominate a node's start.
	errc := make(chan error, len(c.Nodes))
	for _, n := range c.Nodes {
		go func() {
			if err := c.startContainerd(ctx, n); err != nil {
				errc <- err
				return
			}
			errc <- c.startKubelet(n)
		}()
	}
	var errs []error
	for range c.Nodes {
		errs = append(errs, <-errc)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	u := c.Usage()
	log.Info("cluster ready", "cluster", c.Name, "nodes", len(c.Nodes), "elapsed", time.Since(began).Round(time.Millisecond),
		"processes", u.Processes, "pss_mib", u.PSSBytes>>20)
	return nil
}

// Stop stops every process of the cluster and removes its namespaces, cgroups, mounts and
// files. It is safe to call on a partly started cluster and more than once.
func (c *Cluster) Stop(ctx context.Context) error {
	c.stopMu.Lock()
	defer c.stopMu.Unlock()
	var errs []error
	if c.relay != nil {
		c.relay.close()
	}
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	// Reverse start order: kube-proxies and kubelets before containerd (so they do not
	// restart what is being stopped), the control plane last. Containers and shims are not
	// stopped one by one: destroying the cgroup tree kills them.
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(5 * time.Second)
	}
	for _, sb := range c.sandboxes() {
		sb.close()
	}
	if c.cg != nil {
		if err := c.cg.destroy(30 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.dir != "" {
		if err := removeAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// recordNetNS remembers a sandbox's network namespace, so Remains can find processes left in it.
func (c *Cluster) recordNetNS(sb *sandbox) {
	if id, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sb.pid())); err == nil {
		c.netnsIDs = append(c.netnsIDs, id)
	}
}

func (c *Cluster) sandboxes() []*sandbox {
	var out []*sandbox
	for _, n := range c.Nodes {
		out = append(out, n.sb)
	}
	for _, sb := range []*sandbox{c.controlPlane, c.fabric} {
		if sb != nil {
			out = append(out, sb)
		}
	}
	return out
}

// Dir is the cluster's directory (logs under Dir/logs, PKI under Dir/pki).
func (c *Cluster) Dir() string { return c.dir }

func (c *Cluster) logDir() string { return filepath.Join(c.dir, "logs") }

func (c *Cluster) logPath(name string) string { return filepath.Join(c.logDir(), name+".log") }

// FabricNetNS is the network namespace of the cluster's fabric: a socket made there reaches
// every node, pod and the control plane.
func (c *Cluster) FabricNetNS() *netns.Handle { return c.fabric.ns }

// DialContext dials an address on the cluster network (a pod IP, a node IP) from the fabric.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return c.fabric.ns.DialContext(ctx, network, addr)
}

// node returns the node called name.
func (c *Cluster) node(name string) (*Node, error) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %q in cluster %s", name, c.Name)
}

// NodeNetNS is node name's network namespace (the "host network" of its pods).
func (c *Cluster) NodeNetNS(name string) (*netns.Handle, error) {
	n, err := c.node(name)
	if err != nil {
		return nil, err
	}
	return n.sb.ns, nil
}

// BinDir is the directory of the pinned binaries the cluster runs (kubectl among them).
func (c *Cluster) BinDir() string { return c.cfg.BinDir }

// NodeCommand prepares a program to run on node name: in its network and mount namespaces and
// its cgroup, as the node's own programs run (for example nft or ip to inspect the node).
func (c *Cluster) NodeCommand(name, program string, args ...string) (*exec.Cmd, error) {
	n, err := c.node(name)
	if err != nil {
		return nil, err
	}
	return n.sb.command(program, args...), nil
}
