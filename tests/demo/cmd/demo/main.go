// Command demo is what `make demo` runs: it starts a two-node Kubernetes cluster on this
// machine, builds ambitctl, and walks through Ambit's user journey step by step (package
// tests/demo), checking every step. Then it prints how to poke at the running mesh and keeps
// it until interrupted (or stops at once with --teardown).
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
	"path/filepath"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/tests/cluster"
	"github.com/ambit-mesh/ambit/tests/demo"
)

type config struct {
	teardown bool
	verbose  bool
}

func main() {
	var cfg config
	flag.BoolVar(&cfg.teardown, "teardown", false, "stop the cluster when the demo is done instead of keeping it for you")
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
	root, err := cluster.ModuleRoot()
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Building ambitctl into bin/ ...")
	ambitctl, err := demo.BuildAmbitctl(ctx, filepath.Join(root, "bin"))
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Starting a 2-node Kubernetes cluster on this machine (etcd, apiserver, kubelets, containerd, runc)...")
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{Nodes: 2, Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "Stopping the cluster...")
		if err := c.Stop(context.Background()); err != nil {
			fmt.Fprintln(out, "  cleanup:", err)
		}
	}()
	fmt.Fprintf(out, "  %d nodes Ready in %.1fs (cluster %s)\n", len(c.Nodes), time.Since(began).Seconds(), c.Name)

	if err := demo.Run(ctx, demo.Env{Cluster: c, Ambitctl: ambitctl, Out: out}); err != nil {
		return err
	}
	u := c.Usage()
	fmt.Fprintf(out, "\nEvery step above was checked, not only printed. The cluster runs %d processes using %d MiB (PSS).\n", u.Processes, u.PSSBytes>>20)
	if cfg.teardown {
		return nil
	}
	rel, err := filepath.Rel(root, ambitctl)
	if err != nil {
		rel = ambitctl
	}
	fmt.Fprintf(out, `
The mesh keeps running until you press Ctrl-C. From another shell:
  export KUBECONFIG=%[1]s
  %[2]s ztunnel-config workloads          # what each ztunnel knows (also services, policies, certificates)
  %[2]s waypoint apply -n %[3]s --enroll-namespace
  %[4]s/kubectl label namespace %[3]s istio.io/dataplane-mode=ambient
  %[4]s/kubectl -n istio-system logs ds/ztunnel    # one access log line per connection
  %[2]s uninstall --purge
Logs of etcd, the apiserver, kubelets and containerd: %[5]s/logs
`, c.Kubeconfig, rel, demo.Namespace, c.BinDir(), c.Dir())
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
