package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/tests/apps/echo/echo"
)

// shutdownTimeout is how long open requests get after SIGTERM; well under the
// pod's default grace period of 30s.
const shutdownTimeout = 5 * time.Second

// runServer serves until ctx is done and returns the exit code.
func runServer(ctx context.Context, args []string, log *slog.Logger) int {
	cfg, err := parseServerFlagsTo(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2 // flag has printed the error
	}
	cfg.Logger = log
	srv := echo.NewServer(cfg)
	if err := srv.Start(); err != nil {
		log.Error("starting echo server", "error", err)
		return 1
	}
	for _, l := range srv.Listeners() {
		log.Info("listening", "protocol", l.Protocol, "addr", l.Addr.String(), "pod", cfg.Identity.Pod, "version", cfg.Identity.Version)
	}
	<-ctx.Done()
	log.Info("shutting down", "timeout", shutdownTimeout.String())
	stopCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Stop(stopCtx); err != nil {
		log.Error("stopping echo server", "error", err)
		return 1
	}
	return 0
}

// parseServerFlagsTo binds the server flags, writing usage and errors to
// output; identity flags default to the environment variables the pod spec
// sets from the downward API.
func parseServerFlagsTo(args []string, output io.Writer) (echo.ServerConfig, error) {
	var cfg echo.ServerConfig
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("echo server", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Var((*ports)(&cfg.HTTPPorts), "http", "comma-separated `ports` serving HTTP/1.1 and h2c")
	fs.Var((*ports)(&cfg.GRPCPorts), "grpc", "comma-separated `ports` serving gRPC")
	fs.Var((*ports)(&cfg.TCPPorts), "tcp", "comma-separated `ports` serving raw TCP")
	fs.StringVar(&cfg.Host, "bind", "", "`address` to listen on (default all)")
	fs.StringVar(&cfg.Identity.Pod, "pod", envOr("POD_NAME", host), "pod name (env POD_NAME, else hostname)")
	fs.StringVar(&cfg.Identity.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace (env POD_NAMESPACE)")
	fs.StringVar(&cfg.Identity.ServiceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "service account (env SERVICE_ACCOUNT)")
	fs.StringVar(&cfg.Identity.Version, "version", os.Getenv("VERSION"), "version label (env VERSION)")
	fs.StringVar(&cfg.Identity.Cluster, "cluster", os.Getenv("CLUSTER"), "cluster name (env CLUSTER)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments %q", fs.Args())
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	if len(cfg.HTTPPorts)+len(cfg.GRPCPorts)+len(cfg.TCPPorts) == 0 {
		err := errors.New("no ports: give at least one of --http, --grpc, --tcp")
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	return cfg, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// ports is a flag.Value for a comma-separated port list.
type ports []int

func (p *ports) String() string {
	if p == nil {
		return ""
	}
	s := make([]string, len(*p))
	for i, n := range *p {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (p *ports) Set(s string) error {
	v, err := echo.ParsePorts(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}
