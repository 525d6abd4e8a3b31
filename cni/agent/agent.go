// Package agent is the CNI node agent (cni-agent): it decides which pods on its node are in
// the ambient mesh (DESIGN.md section 5 selectors), installs their redirection through a
// redirect.Backend, hands their network namespaces to ztunnel over ZDS, annotates them
// ambient.istio.io/redirection=enabled, serves the ambit-cni plugin's requests during CNI ADD,
// and installs the plugin and the node's probe SNAT rule.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/zds"
)

// Config is the agent's configuration.
type Config struct {
	// NodeName is the node this agent serves (required).
	NodeName string
	// ZDSSocket is where ztunnel connects.
	ZDSSocket string
	// CNISocket is where the plugin calls the agent.
	CNISocket string
	// ProcRoot is the host's /proc (the agent runs with hostPID).
	ProcRoot string
	// NodeNetns is the node's network namespace, for the probe SNAT rule; the agent runs
	// with hostNetwork, so its own.
	NodeNetns string
	// PluginBinary is the ambit-cni binary to install into CNIBinDir; "" installs nothing.
	PluginBinary string
	CNIBinDir    string
	CNIConfDir   string
	// ProbeRule installs the node's probe SNAT rule.
	ProbeRule bool
	// AckTimeout bounds ztunnel's answer to one ZDS request.
	AckTimeout time.Duration
	// DaemonSet is the agent's own DaemonSet, "<namespace>/<name>". When the agent stops and
	// it is gone (an uninstall), the agent removes what it installed; "" never does.
	DaemonSet string
	// FailOpenGrace is how long ztunnel may be gone (no ZDS connection) before pods annotated
	// ambient.ambit.dev/fail-open=true bypass capture; it must be positive.
	FailOpenGrace time.Duration
}

// DefaultConfig returns the defaults for a node.
func DefaultConfig() Config {
	return Config{
		ZDSSocket:  zds.DefaultPath,
		CNISocket:  agentapi.DefaultSocket,
		ProcRoot:   "/proc",
		NodeNetns:  "/proc/self/ns/net",
		CNIBinDir:  "/opt/cni/bin",
		CNIConfDir: "/etc/cni/net.d",
		ProbeRule:  true,
		AckTimeout: zds.DefaultAckTimeout,

		FailOpenGrace: DefaultFailOpenGrace,
	}
}

// Agent is one node's agent.
type Agent struct {
	cfg     Config
	client  kubernetes.Interface
	backend redirect.Backend
	zds     *zds.Server
	log     *slog.Logger

	factory informers.SharedInformerFactory
	nsInf   informers.SharedInformerFactory
	pods    corelisters.PodLister
	nss     corelisters.NamespaceLister
	synced  []cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[string]

	// bypassing is set while ztunnel has been gone for longer than cfg.FailOpenGrace: the
	// fail-open pods' traffic then bypasses capture. watchZtunnel writes it.
	bypassing atomic.Bool

	// mu serializes enrolment changes and guards members.
	mu      sync.Mutex
	members map[string]*member // by pod UID

	// probeDirty asks syncProbes to rewrite the node's probe rule (see markProbeDirty).
	probeDirty chan struct{}
}

// member is an enrolled pod.
type member struct {
	key    string // namespace/name
	pod    redirect.Pod
	info   *zds.WorkloadInfo
	nsFile *os.File // the agent's own reference to the pod netns (pod.Netns points at it)
	// bypassed: a fail-open pod whose redirection and ZDS record are removed while ztunnel
	// is gone (failopen.go).
	bypassed bool
}

// New wires an agent; Run starts it. log may be nil.
func New(cfg Config, client kubernetes.Interface, backend redirect.Backend, log *slog.Logger) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("creating cni-agent: the node name is empty (set --node-name, usually from the downward API's spec.nodeName)")
	}
	if cfg.FailOpenGrace <= 0 {
		return nil, fmt.Errorf("creating cni-agent: fail-open grace period %s: must be positive (e.g. %s)", cfg.FailOpenGrace, DefaultFailOpenGrace)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg: cfg, client: client, backend: backend, log: log,
		zds:        zds.NewServer(log.With("component", "zds"), cfg.AckTimeout),
		members:    map[string]*member{},
		probeDirty: make(chan struct{}, 1),
		queue:      workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	a.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	a.nsInf = informers.NewSharedInformerFactory(client, 0)
	podInf := a.factory.Core().V1().Pods()
	nsInf := a.nsInf.Core().V1().Namespaces()
	a.pods, a.nss = podInf.Lister(), nsInf.Lister()
	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	r1, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePod, UpdateFunc: func(_, o any) { enqueuePod(o) }, DeleteFunc: enqueuePod,
	})
	if err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	enqueueNamespace := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return
		}
		pods, _ := a.pods.Pods(ns.Name).List(labels.Everything())
		for _, p := range pods {
			a.queue.Add(p.Namespace + "/" + p.Name)
		}
	}
	r2, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNamespace, UpdateFunc: func(_, o any) { enqueueNamespace(o) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching namespaces: %w", err)
	}
	a.synced = []cache.InformerSynced{r1.HasSynced, r2.HasSynced}
	return a, nil
}

// ZDS returns the agent's ZDS server (tests use it to see what ztunnel is told).
func (a *Agent) ZDS() *zds.Server { return a.zds }

// Run starts the informers, recovers the enrolment of pods a previous agent enrolled, then
// serves ZDS and the CNI API and reconciles pods until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.release()
	synced := false
	defer func() {
		if synced {
			a.stopped(ctx)
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.queue.ShutDown()
	defer cancel()

	a.factory.Start(ctx.Done())
	a.nsInf.Start(ctx.Done())
	defer a.factory.Shutdown()
	defer a.nsInf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("syncing pod and namespace informers: %w", context.Cause(ctx))
	}
	synced = true
	a.recover(ctx)

	zln, err := zds.Listen(a.cfg.ZDSSocket)
	if err != nil {
		return err
	}
	cln, err := listenCNI(a.cfg.CNISocket)
	if err != nil {
		zln.Close()
		return err
	}
	srv := a.cniServer()
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := a.zds.Serve(ctx, zln); err != nil {
			errc <- err
		}
	})
	wg.Go(func() {
		if err := srv.Serve(ctx, cln); err != nil {
			errc <- fmt.Errorf("serving the CNI API: %w", err)
		}
	})
	wg.Go(func() { a.worker(ctx) })
	if a.cfg.ProbeRule {
		wg.Go(func() { a.syncProbes(ctx) })
	}
	wg.Go(func() { a.watchZtunnel(ctx) })
	if a.cfg.PluginBinary != "" {
		wg.Go(func() { a.keepPluginInstalled(ctx) })
	}
	a.log.Info("cni-agent running", "node", a.cfg.NodeName, "backend", a.backend.Name(),
		"zds", a.cfg.ZDSSocket, "cni", a.cfg.CNISocket)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// stopped runs once everything else of Run has stopped (nothing reinstalls the plugin any
// more): on an uninstall it removes what the agent put on the node; on a restart it leaves
// everything for the next agent to recover.
func (a *Agent) stopped(ctx context.Context) {
	// The caller's context has ended: the checks get their own bounded one.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if gone, why := a.removed(ctx); gone {
		a.log.Info("the mesh is being uninstalled; removing the agent's rules and plugin from the node", "reason", why)
		if err := a.uninstall(ctx); err != nil {
			a.log.Error("uninstalling from the node", "err", err)
		}
	}
}

// release closes the netns files the agent holds once everything has stopped. The pods'
// redirection stays: a restarted agent recovers it.
func (a *Agent) release() {
	a.zds.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.members {
		if m.nsFile != nil {
			m.nsFile.Close()
		}
	}
	a.members = map[string]*member{}
}

// watchZtunnel resyncs every pod when a ztunnel connects: pods that could not be enrolled
// while none was connected get their turn, and bypassed fail-open pods are captured again.
// When ztunnel has been gone for longer than the fail-open grace period it resyncs every pod
// too, so that the fail-open ones bypass capture.
func (a *Agent) watchZtunnel(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	o := newOutage(a.cfg.FailOpenGrace, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch o.observe(a.zds.Connected(), time.Now()) {
		case ztunnelBack:
			a.bypassing.Store(false)
			a.log.Info("ztunnel connected; resyncing pods")
			a.enqueueAll()
		case ztunnelGone:
			a.log.Warn("ztunnel disconnected; captured pods cannot connect until it returns, except pods annotated "+
				FailOpenAnnotation+"=true, which bypass capture if it stays away longer than the grace period",
				"grace", a.cfg.FailOpenGrace)
		case graceExpired:
			a.bypassing.Store(true)
			a.log.Warn("ztunnel gone for longer than the fail-open grace period; pods annotated "+
				FailOpenAnnotation+"=true bypass capture until it returns", "grace", a.cfg.FailOpenGrace)
			a.enqueueAll()
		}
	}
}

func (a *Agent) enqueueAll() {
	pods, _ := a.pods.List(labels.Everything())
	for _, p := range pods {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

// keepPluginInstalled installs the plugin binary and conflist entry, and checks every ten
// seconds that the entry is still there (the primary plugin may rewrite its conflist).
func (a *Agent) keepPluginInstalled(ctx context.Context) {
	entry := map[string]any{"type": "ambit-cni", "agentSocket": a.cfg.CNISocket}
	binaryDone := false
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		if !binaryDone {
			if err := installBinary(a.cfg.PluginBinary, a.cfg.CNIBinDir); err != nil {
				a.log.Error("installing the CNI plugin binary", "err", err)
			} else {
				binaryDone = true
			}
		}
		if binaryDone {
			path, changed, err := installConflistEntry(a.cfg.CNIConfDir, entry)
			switch {
			case err != nil:
				a.log.Warn("adding ambit-cni to the CNI conflist; will retry", "err", err)
			case changed:
				a.log.Info("added ambit-cni as the last plugin of the CNI conflist", "path", path)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// listenCNI listens on the plugin's Unix socket, replacing a stale one.
func listenCNI(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating CNI API socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale CNI API socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on CNI API socket: %w", err)
	}
	return ln, nil
}
