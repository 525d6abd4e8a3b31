package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/gopool"
	"github.com/ambit-mesh/ambit/internal/hbone"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/netns"
	"github.com/ambit-mesh/ambit/internal/sockopt"
)

// The in-pod ports (DESIGN.md section 3).
const (
	OutboundPort  = 15001
	InboundPort   = 15006
	HBONEPort     = 15008
	DNSPort       = 15053
	ztunnelMark   = 0x539
	defaultDialTO = 10 * time.Second
)

// Config wires a Proxy. Mesh, Certs and Tunnel are required.
type Config struct {
	Mesh  Mesh
	Certs Certs
	// Tunnel opens the outbound HBONE streams; the proxy does not close it.
	Tunnel *hbone.Pool
	// Network is the node's network ("" is the default network).
	Network string
	// TrustDomain is used for workloads whose trust domain the control plane left empty.
	TrustDomain string
	// Recorder observes every connection (metrics, access log); nil records nothing.
	Recorder Recorder
	// ServeDNS, when set, serves a pod's DNS proxy on the sockets opened for it until ctx ends.
	// dial reaches upstream resolvers from inside the pod's namespace, with ztunnel's mark.
	ServeDNS func(ctx context.Context, pod PodInfo, pc net.PacketConn, ln net.Listener, dial func(ctx context.Context, network, addr string) (net.Conn, error))
	// ConnectTimeout bounds each upstream connect (default 10 s).
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds an HBONE client's TLS handshake and CONNECT (default 10 s).
	HandshakeTimeout time.Duration
	Log              *slog.Logger
}

// PodInfo names a pod the proxy serves.
type PodInfo struct {
	UID       string
	Name      string
	Namespace string
	// Identity is the pod's SPIFFE identity: the certificate it presents and requests with.
	Identity identity.Identity
}

// Pod is one pod being served.
type Pod struct {
	PodInfo

	ns *netns.Handle
	// dialer makes the pod's outbound and delivery sockets inside its namespace without a
	// namespace switch per connection.
	dialer  *netns.Dialer
	srcOnce sync.Once
	src     *hbone.Source
	ctx     context.Context
	cancel  context.CancelFunc
	// The sockets opened in the pod's namespace; dnsTCP and dnsUDP stay nil without DNS capture.
	outboundLn, inboundLn, hboneLn, dnsTCP net.Listener
	dnsUDP                                 net.PacketConn
	wg                                     sync.WaitGroup
}

// Proxy serves the pods of one node.
type Proxy struct {
	cfg Config
	log *slog.Logger

	// mu guards pods and stopping.
	mu       sync.Mutex
	pods     map[string]*Pod
	stopping bool

	conns *inboundConns
	// workers run each connection's goroutines: a reused goroutine has its stack grown
	// already.
	workers *gopool.Pool
}

// Idle goroutines kept for the next connections, and for how long.
const (
	idleWorkers    = 32
	idleWorkerTime = 10 * time.Second
)

// New returns a Proxy with no pods.
func New(cfg Config) (*Proxy, error) {
	if cfg.Mesh == nil || cfg.Certs == nil || cfg.Tunnel == nil {
		return nil, errors.New("proxy: Mesh, Certs and Tunnel are required")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultDialTO
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	if cfg.Recorder == nil {
		cfg.Recorder = nopRecorder{}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{cfg: cfg, log: log, pods: map[string]*Pod{}, conns: newInboundConns(), workers: gopool.New(idleWorkers, idleWorkerTime)}, nil
}

// AddPod starts serving a pod inside its network namespace. The proxy owns ns from then on,
// also when AddPod fails. Adding a pod that is already served in the same namespace keeps it
// as it is, listeners and open connections included: that is the node agent's replay after it
// restarted, and the ports are taken by the pod's own listeners anyway. Adding it with another
// namespace (a new sandbox) replaces it.
func (px *Proxy) AddPod(ctx context.Context, pod PodInfo, ns *netns.Handle) error {
	px.mu.Lock()
	served := px.pods[pod.UID]
	px.mu.Unlock()
	if served != nil {
		same, err := sameNamespace(served.ns, ns)
		if err != nil {
			ns.Close()
			return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		if same && served.PodInfo == pod {
			ns.Close()
			px.log.Info("pod added again in the same network namespace; kept as served", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID)
			return nil
		}
		if same {
			// Changed details in the same namespace: its listeners hold the ports.
			px.RemovePod(pod.UID)
		}
	}
	p := &Pod{PodInfo: pod, ns: ns}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := px.listen(ctx, p); err != nil {
		p.close()
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	d, err := ns.NewDialer()
	if err != nil {
		p.close()
		return fmt.Errorf("pod %s/%s: starting its dialer: %w", pod.Namespace, pod.Name, err)
	}
	p.dialer = d
	px.mu.Lock()
	if px.stopping {
		px.mu.Unlock()
		p.close()
		return fmt.Errorf("pod %s/%s: ztunnel is stopping", pod.Namespace, pod.Name)
	}
	old := px.pods[p.UID]
	px.pods[p.UID] = p
	px.mu.Unlock()
	if old != nil {
		old.close()
	}
	px.serve(p)
	px.log.Info("pod added", "pod", p.Namespace+"/"+p.Name, "uid", p.UID, "identity", p.Identity.String())
	return nil
}

// sameNamespace says whether two handles refer to one network namespace (the same nsfs
// inode), whichever paths they were opened from.
func sameNamespace(a, b *netns.Handle) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a.Fd(), &sa); err != nil {
		return false, fmt.Errorf("inspecting the served network namespace: %w", err)
	}
	if err := unix.Fstat(b.Fd(), &sb); err != nil {
		return false, fmt.Errorf("inspecting the added network namespace: %w", err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// RemovePod stops serving a pod: its listeners and connections close. Unknown pods are fine.
func (px *Proxy) RemovePod(uid string) {
	px.mu.Lock()
	p := px.pods[uid]
	delete(px.pods, uid)
	px.mu.Unlock()
	if p != nil {
		p.close()
		px.log.Info("pod removed", "pod", p.Namespace+"/"+p.Name, "uid", uid)
	}
}

// Pods returns the UIDs of the pods served.
func (px *Proxy) Pods() []string {
	px.mu.Lock()
	defer px.mu.Unlock()
	uids := make([]string, 0, len(px.pods))
	for uid := range px.pods {
		uids = append(uids, uid)
	}
	return uids
}

// Stop stops accepting on every pod, lets open connections finish until ctx ends, then closes
// what is left.
func (px *Proxy) Stop(ctx context.Context) {
	px.mu.Lock()
	px.stopping = true
	pods := px.pods
	px.pods = map[string]*Pod{}
	px.mu.Unlock()
	for _, p := range pods {
		p.closeListeners()
	}
	done := make(chan struct{})
	go func() {
		for _, p := range pods {
			p.wg.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	for _, p := range pods {
		p.close()
	}
}

// listen opens the pod's listeners inside its namespace.
func (px *Proxy) listen(ctx context.Context, p *Pod) error {
	lc := sockopt.ListenConfig()
	// The node agent leaves DNS uncaptured for pods that opt out; the socket is then unused.
	withDNS := px.cfg.ServeDNS != nil
	return p.ns.Do(func() error {
		var err error
		tcp := func(port int) net.Listener {
			if err != nil {
				return nil
			}
			var ln net.Listener
			addr := fmt.Sprintf("0.0.0.0:%d", port)
			if ln, err = lc.Listen(ctx, "tcp4", addr); err != nil {
				err = fmt.Errorf("listening on %s in the pod's network namespace: %w", addr, err)
			}
			return ln
		}
		p.outboundLn, p.inboundLn, p.hboneLn = tcp(OutboundPort), tcp(InboundPort), tcp(HBONEPort)
		if withDNS {
			p.dnsTCP = tcp(DNSPort)
			if err == nil {
				addr := fmt.Sprintf("0.0.0.0:%d", DNSPort)
				if p.dnsUDP, err = lc.ListenPacket(ctx, "udp4", addr); err != nil {
					err = fmt.Errorf("listening on udp %s in the pod's network namespace: %w", addr, err)
				}
			}
		}
		return err
	})
}

// serve starts the pod's accept loops.
func (px *Proxy) serve(p *Pod) {
	p.goServe(func() { px.acceptLoop(p, p.outboundLn, px.outbound) })
	p.goServe(func() { px.acceptLoop(p, p.inboundLn, px.plaintextInbound) })
	p.goServe(func() { px.serveHBONE(p, p.hboneLn) })
	if p.dnsTCP != nil {
		p.goServe(func() { px.cfg.ServeDNS(p.ctx, p.PodInfo, p.dnsUDP, p.dnsTCP, p.dialAny) })
	}
}

func (p *Pod) goServe(fn func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

// acceptLoop accepts until the listener closes, one (pooled) goroutine per connection.
func (px *Proxy) acceptLoop(p *Pod, ln net.Listener, handle func(*Pod, net.Conn)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// Out of descriptors and the like: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			px.log.Warn("accept failed", "pod", p.Namespace+"/"+p.Name, "listener", ln.Addr().String(), "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		p.wg.Add(1)
		px.workers.Go(func() {
			defer p.wg.Done()
			stop := context.AfterFunc(p.ctx, func() { c.Close() })
			defer stop()
			handle(p, c)
		})
	}
}

// dial connects from inside the pod's namespace with ztunnel's mark, so capture skips it. With
// a valid src the socket is transparent and bound to src (the real client address).
func (px *Proxy) dial(ctx context.Context, p *Pod, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, px.cfg.ConnectTimeout)
	defer cancel()
	// The Dialer's sockets are plain TCP, never MPTCP.
	return p.dialer.DialContext(ctx, "tcp", dst.String(), netns.DialOptions{
		Control:   sockopt.Control,
		LocalAddr: src,
		KeepAlive: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 30 * time.Second},
	})
}

// dialer returns a DialContext that connects from the pod's namespace with ztunnel's mark.
func (px *Proxy) dialer(p *Pod) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dialing %q: %w", addr, err)
		}
		return px.dial(ctx, p, netip.Addr{}, ap)
	}
}

// dialAny dials TCP or UDP (the DNS proxy's upstreams, IP literals) from inside the pod's
// namespace with ztunnel's mark.
func (p *Pod) dialAny(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.dialer.DialContext(ctx, network, addr, netns.DialOptions{Control: sockopt.Control})
}

func (p *Pod) closeListeners() {
	for _, ln := range []net.Listener{p.outboundLn, p.inboundLn, p.hboneLn, p.dnsTCP} {
		if ln != nil {
			ln.Close()
		}
	}
	if p.dnsUDP != nil {
		p.dnsUDP.Close()
	}
}

// close ends the pod: listeners, then every connection (through its context), then the
// namespace handle.
func (p *Pod) close() {
	p.closeListeners()
	p.cancel()
	p.wg.Wait()
	if p.dialer != nil {
		p.dialer.Close()
	}
	if p.ns != nil {
		p.ns.Close()
	}
}
