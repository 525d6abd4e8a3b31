// Command istiod-lite is Ambit's control plane: it watches Kubernetes and serves ztunnels
// their workloads, services and policies over delta xDS.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ambit-mesh/ambit/istiod-lite/server"
)

func main() {
	cfg := server.DefaultConfig()
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig `file` (default: in-cluster configuration)")
	flag.StringVar(&cfg.ConfigDir, "config-dir", "", "read Pods, Services, EndpointSlices, Nodes and Istio security policies from YAML files in `dir` instead of Kubernetes (file mode)")
	flag.StringVar(&cfg.PlaintextAddr, "xds-plaintext-addr", cfg.PlaintextAddr, "`address` of the plaintext xDS and CA listener")
	flag.StringVar(&cfg.TLSAddr, "xds-tls-addr", cfg.TLSAddr, "`address` of the TLS xDS and CA listener")
	flag.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "istiod-lite's `namespace` (holds the CA Secrets cacerts or istio-ca-secret)")
	flag.Func("trusted-node-accounts", "comma-separated `ns/sa` list of node agents allowed to request certificates for pods on their node (default istio-system/ztunnel)", func(v string) error {
		cfg.CA.TrustedNodeAccounts = strings.Split(v, ",")
		return nil
	})
	flag.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "`address` of the readiness and metrics listener")
	flag.StringVar(&cfg.Model.ClusterID, "cluster-id", cfg.Model.ClusterID, "cluster name in workload UIDs")
	flag.StringVar(&cfg.Model.TrustDomain, "trust-domain", cfg.Model.TrustDomain, "SPIFFE trust domain")
	flag.StringVar(&cfg.Model.DomainSuffix, "domain-suffix", cfg.Model.DomainSuffix, "cluster DNS suffix")
	flag.StringVar(&cfg.Model.RootNamespace, "root-namespace", cfg.Model.RootNamespace, "namespace of mesh-wide policies")
	flag.StringVar(&cfg.Model.Network, "network", cfg.Model.Network, "network of this cluster's workloads")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, cfg, logger); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg server.Config, logger *slog.Logger) error {
	s, err := server.Start(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer s.Stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.Err():
		return err
	}
}
