// Command demo is what `make demo` runs: it starts a two-node test cluster on this machine,
// runs the smoke scenario step by step, prints how to use the cluster, and keeps it running
// until interrupted (or tears it down at once with --teardown). Later waves add Ambit's
// install and mesh steps to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/smoke"
)

type config struct {
	nodes    int
	teardown bool
	verbose  bool
}

func main() {
	var cfg config
	flag.IntVar(&cfg.nodes, "nodes", 2, "number of worker nodes")
	flag.BoolVar(&cfg.teardown, "teardown", false, "stop the cluster when the scenario is done instead of keeping it for you")
	flag.BoolVar(&cfg.verbose, "v", false, "show the harness's own progress lines")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if cfg.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	fmt.Fprintf(out, "Starting a %d-node Kubernetes cluster on this machine (etcd, apiserver, kubelets, containerd, runc)...\n", cfg.nodes)
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{Nodes: cfg.nodes, Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "Stopping the cluster...")
		if err := c.Stop(context.Background()); err != nil {
			fmt.Fprintln(out, "  cleanup:", err)
		}
	}()
	fmt.Fprintf(out, "  %d nodes Ready in %.1fs (cluster %s)\n\n", len(c.Nodes), time.Since(began).Seconds(), c.Name)

	const ns = "demo"
	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		return err
	}
	fmt.Fprintln(out, "Smoke scenario: echo replicas on both nodes, a Service, a DaemonSet and a client pod.")
	n := 0
	err = smoke.Run(ctx, c, ns, func(title, detail string) {
		n++
		fmt.Fprintf(out, "  %d. %s\n     %s\n", n, title, detail)
	})
	if err != nil {
		return fmt.Errorf("smoke scenario: %w", err)
	}
	u := c.Usage()
	fmt.Fprintf(out, "\nEvery step above was checked, not only printed. The cluster runs %d processes using %d MiB (PSS).\n", u.Processes, u.PSSBytes>>20)
	if cfg.teardown {
		return nil
	}
	fmt.Fprintf(out, `
The cluster keeps running until you press Ctrl-C. From another shell:
  export KUBECONFIG=%s
  %s/kubectl get pods -A -o wide
  %s/kubectl -n %s logs deploy/echo
Logs of etcd, the apiserver, kubelets and containerd: %s/logs
`, c.Kubeconfig, c.BinDir(), c.BinDir(), ns, c.Dir())
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
