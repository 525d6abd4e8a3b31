// Package server wires istiod-lite together: the Kubernetes watcher feeding the model, the
// model filling the store, and the gRPC and HTTP listeners serving it. main and the
// end-to-end tests both start it through Start.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/files"
	"github.com/ambit-mesh/ambit/istiod-lite/kube"
	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

// Config is istiod-lite's configuration.
type Config struct {
	// Kubeconfig is the path of a kubeconfig; empty means the in-cluster configuration.
	Kubeconfig string
	// ConfigDir, when set, replaces Kubernetes: the objects are read from YAML files in it
	// (file mode), re-read when they change.
	ConfigDir string
	// PlaintextAddr serves xDS and the CA without TLS, for local use (Istio's 15010).
	PlaintextAddr string
	// TLSAddr serves xDS and the CA over TLS with istiod-lite's own certificate (Istio's
	// 15012); not served in file mode.
	TLSAddr string
	// HTTPAddr serves /ready and /metrics.
	HTTPAddr string
	// Namespace is istiod-lite's namespace, which holds the CA's Secrets.
	Namespace string
	// ServingDNSNames are the names in istiod-lite's serving certificate.
	ServingDNSNames []string
	// CA configures the certificate authority (its trust domain is Model.TrustDomain).
	CA ca.Config
	// Model is the mesh's naming.
	Model model.Config
	// SyncTimeout bounds the informers' initial sync.
	SyncTimeout time.Duration
}

// DefaultConfig returns the defaults: Istio's ports and naming.
func DefaultConfig() Config {
	return Config{PlaintextAddr: ":15010", TLSAddr: ":15012", HTTPAddr: ":15014", Namespace: "istio-system",
		ServingDNSNames: []string{"istiod.istio-system.svc", "istiod-lite.istio-system.svc", "istiod.istio-system.svc.cluster.local"},
		CA:              ca.DefaultConfig(), Model: model.DefaultConfig(), SyncTimeout: time.Minute}
}

// Server is a running istiod-lite.
type Server struct {
	// Store holds what is served (for tests and debug views).
	Store *store.Store
	// PlaintextAddr, TLSAddr and HTTPAddr are the bound addresses (TLSAddr is empty in file
	// mode).
	PlaintextAddr, TLSAddr, HTTPAddr string

	cancel  context.CancelFunc
	grpc    *grpc.Server
	tls     *grpc.Server
	ca      *ca.Server
	serving *servingCert
	http    *http.Server
	watcher *kube.Watcher
	wg      sync.WaitGroup
	errc    chan error
}

// Start connects to Kubernetes, waits for the initial state, then starts serving. Stop ends it.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Server{Store: store.NewStore(), cancel: cancel, errc: make(chan error, 3)}
	index := model.NewIndex(cfg.Model, s.Store)
	if err := s.startSource(ctx, cfg, index, logger); err != nil {
		s.Stop()
		return nil, err
	}

	plain, err := net.Listen("tcp", cfg.PlaintextAddr)
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("listening for xDS on %s: %w", cfg.PlaintextAddr, err)
	}
	s.PlaintextAddr = plain.Addr().String()
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	xdsServer := xds.NewServer(s.Store, logger.With("component", "xds"))
	m, err := newMetrics(s, xdsServer)
	if err != nil {
		s.Stop()
		return nil, err
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(m.caInterceptor))
	s.grpc = grpc.NewServer(opts...)
	xdsServer.Register(s.grpc)
	if s.ca != nil {
		s.ca.Register(s.grpc)
	}
	s.serve("xDS", func() error { return s.grpc.Serve(plain) })

	if s.ca != nil {
		tl, err := net.Listen("tcp", cfg.TLSAddr)
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("listening for TLS xDS on %s: %w", cfg.TLSAddr, err)
		}
		s.TLSAddr = tl.Addr().String()
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.serving.get})
		s.tls = grpc.NewServer(append(opts, grpc.Creds(creds))...)
		xdsServer.Register(s.tls)
		s.ca.Register(s.tls)
		s.serve("TLS xDS", func() error { return s.tls.Serve(tl) })
	}

	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("listening for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	s.HTTPAddr = hl.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.serve("HTTP", func() error { return s.http.Serve(hl) })
	logger.Info("istiod-lite serving", "xds", s.PlaintextAddr, "tls", s.TLSAddr, "http", s.HTTPAddr)
	return s, nil
}

// startSource starts what feeds the model: the Kubernetes watcher, or the config directory.
func (s *Server) startSource(ctx context.Context, cfg Config, index *model.Index, logger *slog.Logger) error {
	if cfg.ConfigDir != "" {
		src := files.NewSource(cfg.ConfigDir, index, logger.With("component", "files"))
		if err := src.Load(); err != nil {
			return fmt.Errorf("file mode: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			src.Run(ctx, time.Second)
		}()
		return nil
	}
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating Kubernetes client: %w", err)
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating Istio client: %w", err)
	}
	if s.watcher, err = kube.NewWatcher(client, ic, index, logger.With("component", "kube")); err != nil {
		return err
	}
	if s.ca, s.serving, err = s.startCA(ctx, cfg, client, s.watcher, logger); err != nil {
		return err
	}
	return s.watcher.Run(ctx, cfg.SyncTimeout)
}

// serve runs a listener's loop, reporting its failure on Err.
func (s *Server) serve(what string, loop func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := loop(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("serving %s: %w", what, err)
		}
	}()
}

// Err returns a channel that reports a listener's failure.
func (s *Server) Err() <-chan error { return s.errc }

// Stop stops serving: open xDS streams end, informers stop.
func (s *Server) Stop() {
	s.cancel()
	for _, g := range []*grpc.Server{s.grpc, s.tls} {
		if g != nil {
			g.Stop()
		}
	}
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.http.Shutdown(ctx)
		cancel()
	}
	s.wg.Wait()
	if s.watcher != nil {
		s.watcher.Shutdown()
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("loading in-cluster Kubernetes config (outside a cluster, pass --kubeconfig): %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	rc.QPS, rc.Burst = 100, 200
	return rc, nil
}
