// Package server wires istiod-lite together: the Kubernetes watcher feeding the model, the
// model filling the store, and the gRPC and HTTP listeners serving it. main and the
// end-to-end tests both start it through Start.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

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
	// HTTPAddr serves /ready and /metrics.
	HTTPAddr string
	// Model is the mesh's naming.
	Model model.Config
	// SyncTimeout bounds the informers' initial sync.
	SyncTimeout time.Duration
}

// DefaultConfig returns the defaults: Istio's ports and naming.
func DefaultConfig() Config {
	return Config{PlaintextAddr: ":15010", HTTPAddr: ":15014", Model: model.DefaultConfig(), SyncTimeout: time.Minute}
}

// Server is a running istiod-lite.
type Server struct {
	// Store holds what is served (for tests and debug views).
	Store *store.Store
	// PlaintextAddr and HTTPAddr are the bound addresses.
	PlaintextAddr, HTTPAddr string

	cancel  context.CancelFunc
	grpc    *grpc.Server
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
	s.grpc = grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	xds.NewServer(s.Store, logger.With("component", "xds")).Register(s.grpc)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(plain); err != nil {
			s.errc <- fmt.Errorf("serving xDS: %w", err)
		}
	}()

	hl, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("listening for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	s.HTTPAddr = hl.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("serving HTTP: %w", err)
		}
	}()
	logger.Info("istiod-lite serving", "xds", s.PlaintextAddr, "http", s.HTTPAddr)
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
	return s.watcher.Run(ctx, cfg.SyncTimeout)
}

// Err returns a channel that reports a listener's failure.
func (s *Server) Err() <-chan error { return s.errc }

// Stop stops serving: open xDS streams end, informers stop.
func (s *Server) Stop() {
	s.cancel()
	if s.grpc != nil {
		s.grpc.Stop()
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
