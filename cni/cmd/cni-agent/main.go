// Command cni-agent is Ambit's CNI node agent (DaemonSet, hostNetwork and hostPID): see
// package agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/cni/agent"
)

func main() {
	cfg := agent.DefaultConfig()
	var kubeconfig, backend string
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig `file` (default: in-cluster configuration)")
	flag.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's `name` (default $NODE_NAME, from the downward API)")
	flag.StringVar(&backend, "backend", "auto", "redirection `backend`: auto (eBPF where supported, else nftables), ebpf or nftables")
	flag.StringVar(&cfg.ZDSSocket, "zds-socket", cfg.ZDSSocket, "`path` of the ZDS socket ztunnel connects to")
	flag.StringVar(&cfg.CNISocket, "cni-socket", cfg.CNISocket, "`path` of the socket the ambit-cni plugin calls")
	flag.StringVar(&cfg.ProcRoot, "proc", cfg.ProcRoot, "the host's /proc (`dir`)")
	flag.StringVar(&cfg.PluginBinary, "plugin-binary", "", "ambit-cni binary to install (`file`); empty: do not install the plugin")
	flag.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "the node's CNI plugin `dir`")
	flag.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "the node's CNI config `dir`")
	flag.BoolVar(&cfg.ProbeRule, "probe-snat", cfg.ProbeRule, "SNAT kubelet probes to 169.254.7.127 in the node's netns")
	flag.DurationVar(&cfg.FailOpenGrace, "fail-open-grace", cfg.FailOpenGrace, "how long ztunnel may be gone (no ZDS connection) before pods annotated "+agent.FailOpenAnnotation+"=true bypass capture (`duration`)")
	flag.StringVar(&cfg.DaemonSet, "daemonset", cfg.DaemonSet, "the agent's own DaemonSet, `namespace/name`: when it is gone at stop (an uninstall), the agent removes its plugin, rules and probe SNAT from the node; empty: never")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, cfg, kubeconfig, backend, logger); err != nil {
		fmt.Fprintln(os.Stderr, "cni-agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg agent.Config, kubeconfig, backend string, logger *slog.Logger) error {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("loading Kubernetes client configuration: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating Kubernetes client: %w", err)
	}
	b, err := agent.SelectBackend(backend, logger)
	if err != nil {
		return err
	}
	a, err := agent.New(cfg, client, b, logger)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
