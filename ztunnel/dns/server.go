// Package dns is ztunnel's per-pod DNS proxy.
//
// ztunnel opens UDP and TCP port 15053 inside each enrolled pod's network namespace (the pod's
// DNS traffic to port 53 is redirected there) and hands the sockets to a [Server]. The server
// answers A and AAAA queries for hosts ztunnel knows (Kubernetes Services and ServiceEntry
// hosts, through a [Resolver]) and forwards everything else to the upstream resolvers it was
// given, over UDP with a TCP retry when the answer is truncated.
//
// The proxy sees fully qualified names: a pod's own resolver expands "name", "name.ns" and
// "name.ns.svc" with its search list (ns.svc.cluster.local svc.cluster.local cluster.local)
// before sending them. Names are matched case-insensitively and without the trailing dot.
//
// Unknown names are forwarded, even under svc.<cluster domain>, as Istio's ztunnel does: what
// ztunnel knows can lag behind the cluster (on-demand discovery, headless Services, pod
// hostnames), and the cluster's own DNS remains the authority. [Config.Authoritative] turns on
// local NXDOMAIN answers for unknown A/AAAA names under svc.<cluster domain> instead, which saves
// the upstream round trips that search-list expansion of external names causes.
//
// Concurrency is bounded per server (one server per pod): at most [Config.MaxInFlight] queries
// are processed at once (further UDP queries are dropped, the client retries) and at most
// [Config.MaxTCPConns] TCP connections are served at once. Malformed queries get FORMERR when
// they carry a readable header and are dropped otherwise.
package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Resolver tells the proxy the addresses of hosts ztunnel knows. A Server serves one pod, so
// give it a Resolver bound to that pod: the pod's namespace decides between same-named hosts
// (ServiceEntry hosts in several namespaces, Services marked canonical).
type Resolver interface {
	// LookupHost returns the addresses of name, a lowercase fully qualified name without the
	// trailing dot (e.g. "reviews.default.svc.cluster.local"). ok is false if the host is
	// unknown. A known host with addresses, but none of the queried family, gets an empty
	// NOERROR answer; a known host with no addresses at all (a headless Service) is forwarded
	// like an unknown one, never answered NXDOMAIN.
	// It is called concurrently and must not block on the network.
	LookupHost(name string) (addrs []netip.Addr, ok bool)
}

// ResolverFunc adapts a function to [Resolver].
type ResolverFunc func(name string) ([]netip.Addr, bool)

// LookupHost calls f(name).
func (f ResolverFunc) LookupHost(name string) ([]netip.Addr, bool) { return f(name) }

// Observer is told about every query a [Server] handles, for metrics. ztunnel's metrics
// package implements it. Methods are called concurrently and must not block.
type Observer interface {
	// ObserveRequest counts a query: queryType is the lowercase type ("a", "aaaa", "mx"),
	// protocol "udp" or "tcp".
	ObserveRequest(queryType, protocol string)
	// ObserveUpstream counts a query forwarded upstream, how long the upstreams took and
	// whether all of them failed (err non-nil).
	ObserveUpstream(queryType, protocol string, took time.Duration, err error)
}

// DialFunc opens a connection to an upstream resolver ("udp" or "tcp", "ip:port").
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Config configures a [Server]. The zero value of every field but Resolver has a default.
type Config struct {
	// Resolver answers for known hosts. Required.
	Resolver Resolver
	// Upstreams are tried in order for names the Resolver does not know (see
	// [ReadResolvConf]). With none, such queries get SERVFAIL.
	Upstreams []netip.AddrPort
	// Dial opens upstream connections; defaults to a plain net.Dialer. ztunnel passes one that
	// marks its sockets when they are made inside a pod's network namespace.
	Dial DialFunc
	// Observer, if set, is told about every query.
	Observer Observer
	// ClusterDomain is the Kubernetes cluster domain; defaults to "cluster.local".
	ClusterDomain string
	// Authoritative answers NXDOMAIN for unknown A/AAAA names under svc.<ClusterDomain>
	// instead of forwarding them.
	Authoritative bool
	// TTL of local answers; defaults to 30s.
	TTL time.Duration
	// Timeout bounds one upstream attempt; defaults to 2s. The whole query is bounded by
	// len(Upstreams) attempts and QueryTimeout.
	Timeout time.Duration
	// QueryTimeout bounds the processing of one query; defaults to 5s.
	QueryTimeout time.Duration
	// MaxInFlight bounds the queries processed at once; defaults to 64.
	MaxInFlight int
	// MaxTCPConns bounds the TCP client connections served at once; defaults to 16.
	MaxTCPConns int
	// TCPIdleTimeout closes a TCP client connection idle this long; defaults to 10s.
	TCPIdleTimeout time.Duration
}

// ErrNoResolver is returned by [New] when Config.Resolver is nil.
var ErrNoResolver = errors.New("dns: config has no resolver")

// Server is one pod's DNS proxy. Create it with [New] and run it with [Server.Serve].
type Server struct {
	cfg Config
	// svcSuffix is ".svc.<cluster domain>", lowercase: names under it are the cluster's
	// Services (answered NXDOMAIN in Authoritative mode when unknown).
	svcSuffix string
	ttl       uint32
	inFlight  chan struct{}
	tcpConns  chan struct{}

	dropped atomic.Uint64
}

// New validates cfg, fills in defaults and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, ErrNoResolver
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 5 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxTCPConns <= 0 {
		cfg.MaxTCPConns = 16
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = 10 * time.Second
	}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() {
			return nil, fmt.Errorf("dns: upstream %q is not a valid address", u)
		}
	}
	return &Server{
		cfg:       cfg,
		svcSuffix: ".svc." + normalize(cfg.ClusterDomain),
		ttl:       uint32(cfg.TTL / time.Second),
		inFlight:  make(chan struct{}, cfg.MaxInFlight),
		tcpConns:  make(chan struct{}, cfg.MaxTCPConns),
	}, nil
}

// Dropped reports how many queries were dropped because MaxInFlight or MaxTCPConns was reached
// or the query was unreadable.
func (s *Server) Dropped() uint64 { return s.dropped.Load() }

// Serve answers queries arriving on pc (UDP) and ln (TCP) until ctx ends; either may be nil.
// Serve owns both: it closes them when it returns, after every goroutine it started has
// finished. It returns nil when ctx ends, or the first error that stopped a listener.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	if pc != nil {
		stop := context.AfterFunc(ctx, func() { pc.Close() })
		defer stop()
		wg.Go(func() {
			if err := s.serveUDP(ctx, pc, &wg); err != nil {
				cancel(fmt.Errorf("serving dns over udp: %w", err))
			}
		})
	}
	if ln != nil {
		stop := context.AfterFunc(ctx, func() { ln.Close() })
		defer stop()
		wg.Go(func() {
			if err := s.serveTCP(ctx, ln, &wg); err != nil {
				cancel(fmt.Errorf("serving dns over tcp: %w", err))
			}
		})
	}
	<-ctx.Done()
	if pc != nil {
		pc.Close()
	}
	if ln != nil {
		ln.Close()
	}
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// acquire takes an in-flight slot without waiting.
func (s *Server) acquire() bool {
	select {
	case s.inFlight <- struct{}{}:
		return true
	default:
		s.dropped.Add(1)
		return false
	}
}

func (s *Server) release() { <-s.inFlight }

// normalize lowercases ASCII letters and strips the dots at both ends of a name. DNS names
// compare case-insensitively in ASCII only (RFC 4343), so strings.ToLower would be wrong for
// non-ASCII bytes.
func normalize(name string) string {
	name = strings.Trim(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}
