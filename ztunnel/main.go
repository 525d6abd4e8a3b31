// Command ztunnel is Ambit's per-node L4 proxy: it serves the enrolled pods of its node inside
// their network namespaces (handed over by the node agent over ZDS), tunnels their traffic over
// HBONE with SPIFFE identities, and enforces L4 authorization at the destination.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"
)

func main() {
	cfg := DefaultConfig()
	cfg.bindFlags(flag.CommandLine)
	flag.Parse()
	if cfg.WorkerThreads > 0 {
		runtime.GOMAXPROCS(cfg.WorkerThreads)
	}
	debug.SetGCPercent(cfg.GCPercent)

	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ztunnel: --log-level %q: want debug, info, warn or error\n", cfg.LogLevel)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, level); err != nil {
		log.Error("ztunnel failed", "error", err)
		os.Exit(1)
	}
}

// Config is everything ztunnel is told at start.
type Config struct {
	// XDSAddress and CAAddress are istiod-lite's (15012 TLS; 15010 with Plaintext).
	XDSAddress, CAAddress string
	Plaintext             bool
	// RootCAFile verifies istiod-lite (the istio-ca-root-cert ConfigMap).
	RootCAFile string
	// ServerName is istiod-lite's TLS name.
	ServerName string
	// TokenFile is ztunnel's service-account token, sent to istiod-lite.
	TokenFile string

	// Who this ztunnel is (the downward API gives these).
	PodName, PodNamespace, PodIP, NodeName, ServiceAccount string
	TrustDomain, ClusterID, Network                        string

	// ZDSPath is the node agent's socket.
	ZDSPath string
	// AdminAddr, StatsAddr and ReadyAddr are the operator endpoints (DESIGN.md section 3).
	AdminAddr, StatsAddr, ReadyAddr string
	// ResolvConf lists the upstream resolvers of the DNS proxy; "" disables the DNS proxy.
	ResolvConf string
	// Drain is how long open connections may finish after a stop signal.
	Drain    time.Duration
	LogLevel string
	// WorkerThreads caps the threads running Go code at once (GOMAXPROCS); 0 keeps Go's
	// default, the CPUs ztunnel may use.
	WorkerThreads int
	// MemoryTrimPeriod is how often ztunnel checks whether a burst left its heap large and,
	// if so, returns the freed memory to the OS (memtrim); 0 leaves it to the Go runtime.
	MemoryTrimPeriod time.Duration
	// GCPercent is how far the heap may grow over the live data before a collection (GOGC).
	// ztunnel allocates almost nothing per request, so collections stay rare at a low value
	// while the heap, which with Go's default (100) may grow to twice the live data and never
	// below 4 MiB, stays near the live data.
	GCPercent int
}

// DefaultConfig returns the values used when no flag says otherwise.
func DefaultConfig() Config {
	return Config{
		XDSAddress:       "istiod.istio-system.svc:15012",
		CAAddress:        "istiod.istio-system.svc:15012",
		RootCAFile:       "/var/run/secrets/istio/root-cert.pem",
		ServerName:       "istiod.istio-system.svc",
		TokenFile:        "/var/run/secrets/tokens/istio-token",
		PodNamespace:     "istio-system",
		ServiceAccount:   "ztunnel",
		TrustDomain:      "cluster.local",
		ClusterID:        "Kubernetes",
		ZDSPath:          "/var/run/ztunnel/ztunnel.sock",
		AdminAddr:        "localhost:15000",
		StatsAddr:        ":15020",
		ReadyAddr:        ":15021",
		ResolvConf:       "/etc/resolv.conf",
		Drain:            5 * time.Second,
		LogLevel:         "info",
		MemoryTrimPeriod: 5 * time.Second,
		GCPercent:        50,
	}
}

func (c *Config) bindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.XDSAddress, "xds-address", c.XDSAddress, "istiod-lite's xDS address")
	fs.StringVar(&c.CAAddress, "ca-address", c.CAAddress, "istiod-lite's CA address")
	fs.BoolVar(&c.Plaintext, "plaintext", c.Plaintext, "talk to istiod-lite without TLS (its 15010 port; local use only)")
	fs.StringVar(&c.RootCAFile, "root-ca", c.RootCAFile, "PEM roots that verify istiod-lite")
	fs.StringVar(&c.ServerName, "server-name", c.ServerName, "istiod-lite's TLS server name")
	fs.StringVar(&c.TokenFile, "token", c.TokenFile, "ztunnel's service-account token file")
	fs.StringVar(&c.PodName, "pod-name", c.PodName, "this ztunnel's pod name")
	fs.StringVar(&c.PodNamespace, "pod-namespace", c.PodNamespace, "this ztunnel's namespace")
	fs.StringVar(&c.PodIP, "pod-ip", c.PodIP, "this ztunnel's pod IP")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "the node this ztunnel serves (required)")
	fs.StringVar(&c.ServiceAccount, "service-account", c.ServiceAccount, "this ztunnel's service account")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "the mesh's trust domain")
	fs.StringVar(&c.ClusterID, "cluster-id", c.ClusterID, "the cluster's id in workload UIDs")
	fs.StringVar(&c.Network, "network", c.Network, "the node's network (empty: the default network)")
	fs.StringVar(&c.ZDSPath, "zds-socket", c.ZDSPath, "the node agent's ZDS socket")
	fs.StringVar(&c.AdminAddr, "admin-address", c.AdminAddr, "admin endpoint (config dump, log level, pprof); - disables")
	fs.StringVar(&c.StatsAddr, "stats-address", c.StatsAddr, "Prometheus metrics endpoint; - disables")
	fs.StringVar(&c.ReadyAddr, "ready-address", c.ReadyAddr, "readiness endpoint /healthz/ready; - disables")
	fs.StringVar(&c.ResolvConf, "resolv-conf", c.ResolvConf, "upstream resolvers of the DNS proxy; empty disables the DNS proxy")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "how long open connections may finish after SIGTERM")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.IntVar(&c.WorkerThreads, "worker-threads", c.WorkerThreads, "threads running the proxy at once (GOMAXPROCS); 0: one per CPU ztunnel may use")
	fs.IntVar(&c.GCPercent, "gc-percent", c.GCPercent, "how far (percent) the heap may grow over the live data before a garbage collection, as GOGC (which this flag overrides); -1 turns collection off")
	fs.DurationVar(&c.MemoryTrimPeriod, "memory-trim-period", c.MemoryTrimPeriod, "how often to check whether a burst of traffic left freed memory to return to the OS; 0 disables")
}
