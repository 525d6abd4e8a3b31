package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/memtrim"
	"github.com/ambit-mesh/ambit/internal/zds"
	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/dns"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// Readiness conditions.
const (
	condXDS = "xds synced"
	condZDS = "node agent snapshot received"
)

// run wires ztunnel's components, serves until ctx ends, then drains and stops them in reverse
// order.
func run(ctx context.Context, cfg Config, log *slog.Logger, level *slog.LevelVar) error {
	if cfg.NodeName == "" {
		return errors.New("--node-name is required (the chart sets it from spec.nodeName)")
	}
	own := identity.Identity{TrustDomain: cfg.TrustDomain, Namespace: cfg.PodNamespace, ServiceAccount: cfg.ServiceAccount}
	if _, err := identity.Parse(own.String()); err != nil {
		return fmt.Errorf("ztunnel's own identity from --trust-domain, --pod-namespace, --service-account: %w", err)
	}

	st := state.New(state.Config{ClusterID: cfg.ClusterID})
	xc, err := xds.New(xds.Config{
		Address: cfg.XDSAddress, Plaintext: cfg.Plaintext, RootCAFile: cfg.RootCAFile, ServerName: cfg.ServerName,
		TokenFile: cfg.TokenFile, PodIP: cfg.PodIP, PodName: cfg.PodName, PodNamespace: cfg.PodNamespace,
		NodeName: cfg.NodeName, Logger: log.With("component", "xds"),
	}, st)
	if err != nil {
		return fmt.Errorf("xds client: %w", err)
	}
	st.SetLookuper(xc)
	cm, err := certs.New(certs.Config{
		Address: cfg.CAAddress, Plaintext: cfg.Plaintext, RootCAFile: cfg.RootCAFile, ServerName: cfg.ServerName,
		TokenFile: cfg.TokenFile, Own: own, Logger: log.With("component", "certs"),
	})
	if err != nil {
		return fmt.Errorf("certificate manager: %w", err)
	}
	m := metrics.New()
	pool := hbone.NewPool(hbone.PoolConfig{})
	defer pool.Close()

	var serveDNS func(context.Context, proxy.PodInfo, net.PacketConn, net.Listener, func(context.Context, string, string) (net.Conn, error))
	if cfg.ResolvConf != "" {
		upstreams, err := dns.ReadResolvConf(cfg.ResolvConf)
		if err != nil {
			return fmt.Errorf("DNS proxy upstreams (--resolv-conf, empty disables the DNS proxy): %w", err)
		}
		serveDNS = dnsServer(st, m, upstreams, cfg.Network, log)
	}
	px, err := proxy.New(proxy.Config{
		Mesh: st, Certs: cm, Tunnel: pool, Network: cfg.Network, TrustDomain: cfg.TrustDomain,
		Recorder: proxy.NewMetricsRecorder(m, log.With("component", "access")), ServeDNS: serveDNS,
		Log: log.With("component", "proxy"),
	})
	if err != nil {
		return err
	}
	pods := inpod.New(px, cm, cfg.TrustDomain, log.With("component", "inpod"))

	ready := admin.NewReadiness(condXDS, condZDS)
	adm := admin.New(admin.Config{
		AdminAddr: cfg.AdminAddr, StatsAddr: cfg.StatsAddr, ReadyAddr: cfg.ReadyAddr,
		Level: level, Metrics: m.WriteText, Ready: ready.Err, Log: log.With("component", "admin"),
	})
	adm.Register(admin.SectionWorkloads, admin.DumperFunc(func() any { return st.Dump().Workloads }))
	adm.Register(admin.SectionServices, admin.DumperFunc(func() any { return st.Dump().Services }))
	adm.Register(admin.SectionPolicies, admin.DumperFunc(func() any { return st.Dump().Policies }))
	adm.Register(admin.SectionCertificates, admin.DumperFunc(func() any { return cm.Status() }))
	if err := adm.Start(ctx); err != nil {
		return fmt.Errorf("admin endpoints: %w", err)
	}

	// Everything below runs until ctx ends; wg waits for it.
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	goRun := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("xds client", func() error { return xc.Run(ctx) })
	goRun("certificate manager", func() error { return cm.Run(ctx) })
	goRun("zds client", func() error {
		// Take the pods (open listeners in them) only once the mesh is known. In a rolling
		// update the old ztunnel serves them meanwhile; a connection the kernel handed to a
		// new one that knows no services yet would go out in plain text as passthrough.
		select {
		case <-xc.Synced():
		case <-ctx.Done():
			return nil
		}
		return zds.RunClient(ctx, cfg.ZDSPath, pods, log.With("component", "zds"))
	})
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-xc.Synced():
			ready.Set(condXDS)
		case <-ctx.Done():
		}
	}()
	policyGen, _ := st.PolicyChanges()
	go func() {
		defer wg.Done()
		recheckOnPolicyChange(ctx, st, policyGen, px, log)
	}()
	if cfg.MemoryTrimPeriod > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			memtrim.New(memtrim.Floor(cfg.GCPercent), memtrim.DefaultRetry).Run(ctx, cfg.MemoryTrimPeriod, log.With("component", "memtrim"))
		}()
	}
	go func() {
		// ZDS readiness follows the handler: lost on reconnect until the snapshot is in.
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if pods.Snapshotted() {
				ready.Set(condZDS)
			} else {
				ready.Unset(condZDS)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	log.Info("ztunnel started", "node", cfg.NodeName, "xds", cfg.XDSAddress, "zds", cfg.ZDSPath, "identity", own.String())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	log.Info("ztunnel stopping", "drain", cfg.Drain)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.Drain)
	defer cancel()
	px.Stop(drainCtx)
	stopCtx, cancelStop := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelStop()
	adm.Stop(stopCtx)
	wg.Wait()
	return runErr
}

// recheckOnPolicyChange closes open inbound connections that a policy change after generation
// since denies.
func recheckOnPolicyChange(ctx context.Context, st *state.State, since uint64, px *proxy.Proxy, log *slog.Logger) {
	st.OnPolicyChange(ctx, since, func(gen uint64) {
		if n := px.Recheck(); n > 0 {
			log.Info("policy change closed connections", "generation", gen, "closed", n)
		}
	})
}

// dnsServer returns the proxy's ServeDNS: one DNS proxy per pod, answering the Services the
// state holds.
func dnsServer(st *state.State, m *metrics.Metrics, upstreams []netip.AddrPort, network string, log *slog.Logger) func(context.Context, proxy.PodInfo, net.PacketConn, net.Listener, func(context.Context, string, string) (net.Conn, error)) {
	resolver := dns.ResolverFunc(func(name string) ([]netip.Addr, bool) {
		svcs := st.ServicesByHostname(name)
		if len(svcs) == 0 {
			return nil, false
		}
		var addrs []netip.Addr
		for _, s := range svcs {
			for _, v := range s.VIPs {
				if v.Network == network {
					addrs = append(addrs, v.Addr)
				}
			}
		}
		return addrs, true
	})
	return func(ctx context.Context, pod proxy.PodInfo, pc net.PacketConn, ln net.Listener, dial func(context.Context, string, string) (net.Conn, error)) {
		// The pod's own labels on the DNS metrics, once its workload is known.
		observer := m.DNSFor(func() (string, string, bool) {
			w, ok := st.LocalWorkload(pod.Namespace, pod.Name)
			if !ok || w.Resource == nil {
				return "", "", false
			}
			return w.Resource.CanonicalName, w.Resource.CanonicalRevision, true
		})
		srv, err := dns.New(dns.Config{Resolver: resolver, Upstreams: upstreams, Dial: dial, Observer: observer})
		if err != nil {
			log.Error("DNS proxy not started", "pod", pod.Namespace+"/"+pod.Name, "error", err)
			return
		}
		if err := srv.Serve(ctx, pc, ln); err != nil && ctx.Err() == nil {
			log.Warn("DNS proxy stopped", "pod", pod.Namespace+"/"+pod.Name, "error", err)
		}
	}
}
