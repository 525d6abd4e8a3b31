package state

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/authz"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// ErrNotFound is returned when the mesh has no workload or service for a query, after the
// on-demand lookup (if any) has answered.
var ErrNotFound = errors.New("not found")

// ErrNoHealthyEndpoint is returned by PickEndpoint for a service without a healthy endpoint
// that serves the port.
var ErrNoHealthyEndpoint = errors.New("no healthy endpoint")

// Lookuper asks the control plane for names the State does not hold; *xds.Client is one.
type Lookuper interface {
	// Lookup returns once the server has answered for name (a workload UID, a Service key, an
	// alias "<network>/<ip>"), with the answer applied to the State.
	Lookup(ctx context.Context, name string) (bool, error)
	// Subscribe is Lookup for a name that may be held already: a Service, to bring the
	// workloads behind it.
	Subscribe(ctx context.Context, name string) (bool, error)
}

// Config configures a State.
type Config struct {
	// ClusterID names the cluster in workload UIDs (default "Kubernetes").
	ClusterID string
	// LookupTimeout bounds each on-demand lookup (default 5 s).
	LookupTimeout time.Duration
}

// State is what a ztunnel knows. It is safe for concurrent use; queries take a read lock for a
// few map lookups, and policies are an immutable authz.Set behind an atomic pointer.
type State struct {
	cfg    Config
	lookup atomic.Pointer[lookuperBox]

	// mu guards the fields below.
	mu        sync.RWMutex
	workloads map[string]*Workload
	// byAddr maps an address to the workloads holding it, latest last: two pods may hold one
	// address for a moment (an IP reused before the old pod's removal arrives).
	byAddr    map[NetworkAddr][]*Workload
	services  map[string]*Service
	vips      map[NetworkAddr]*Service
	hostnames map[string][]*Service
	// endpoints maps a service key to the workloads backing it, sorted by UID; each slice
	// is replaced, never changed in place, so a reader may keep it after unlocking.
	endpoints map[string][]*Workload
	// fetched holds the service keys subscribed by name, whose endpoints the server keeps
	// sending.
	fetched         map[string]bool
	policyResources map[string]*apiwire.Authorization
	policyChanged   chan struct{} // closed and replaced on every policy change
	policyGen       uint64
	policies        atomic.Pointer[authz.Set]
	addressUpdates  uint64
}

type lookuperBox struct{ l Lookuper }

// New returns an empty State.
func New(cfg Config) *State {
	if cfg.ClusterID == "" {
		cfg.ClusterID = "Kubernetes"
	}
	if cfg.LookupTimeout <= 0 {
		cfg.LookupTimeout = 5 * time.Second
	}
	s := &State{
		cfg:       cfg,
		workloads: map[string]*Workload{}, byAddr: map[NetworkAddr][]*Workload{},
		services: map[string]*Service{}, vips: map[NetworkAddr]*Service{}, hostnames: map[string][]*Service{},
		endpoints: map[string][]*Workload{}, fetched: map[string]bool{},
		policyResources: map[string]*apiwire.Authorization{}, policyChanged: make(chan struct{}),
	}
	s.policies.Store(authz.NewSet())
	return s
}

// SetLookuper sets what on-demand lookups go through (the xDS client, made after the State
// since the State is its Sink). Without one, queries answer from what is held.
func (s *State) SetLookuper(l Lookuper) { s.lookup.Store(&lookuperBox{l: l}) }

var _ xds.Sink = (*State)(nil)

// Update implements xds.Sink. Resources that cannot be applied are left out and named in the
// returned error; the rest is applied.
func (s *State) Update(typeURL string, set []xds.Resource, removed []string) error {
	switch typeURL {
	case xds.AddressType:
		return s.updateAddresses(set, removed)
	case xds.AuthorizationType:
		return s.updatePolicies(set, removed)
	}
	return fmt.Errorf("state: unknown type %s", typeURL)
}

func (s *State) updateAddresses(set []xds.Resource, removed []string) error {
	var errs []error
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addressUpdates++
	policyListsChanged := false
	for _, name := range removed {
		if old := s.workloads[name]; old != nil {
			s.removeWorkload(old)
			policyListsChanged = policyListsChanged || len(old.AuthorizationPolicies) > 0
		}
		if old := s.services[name]; old != nil {
			s.removeService(old)
		}
	}
	for _, r := range set {
		switch {
		case r.Workload != nil:
			if r.Workload.UID != r.Name {
				errs = append(errs, fmt.Errorf("%s: workload uid is %q, want the resource name", r.Name, r.Workload.UID))
				continue
			}
			w := fromWorkload(r.Workload)
			old := s.workloads[r.Name]
			if old != nil {
				s.removeWorkload(old)
			}
			if old == nil && len(w.AuthorizationPolicies) > 0 || old != nil && !slices.Equal(old.AuthorizationPolicies, w.AuthorizationPolicies) {
				policyListsChanged = true
			}
			s.addWorkload(w)
		case r.Service != nil:
			if old := s.services[r.Name]; old != nil {
				s.removeService(old)
			}
			s.addService(fromService(r.Name, r.Service))
		default:
			errs = append(errs, fmt.Errorf("%s: address is neither a workload nor a service", r.Name))
		}
	}
	if policyListsChanged {
		s.policyChangedLocked()
	}
	return errors.Join(errs...)
}

func (s *State) addWorkload(w *Workload) {
	s.workloads[w.UID] = w
	for _, a := range w.Addresses {
		k := NetworkAddr{Network: w.Network, Addr: a}
		if !slices.Contains(s.byAddr[k], w) {
			s.byAddr[k] = append(slices.Clone(s.byAddr[k]), w)
		}
	}
	for key := range w.Services {
		eps := s.endpoints[key]
		i, _ := slices.BinarySearchFunc(eps, w.UID, func(e *Workload, uid string) int { return cmpString(e.UID, uid) })
		s.endpoints[key] = slices.Insert(slices.Clone(eps), i, w)
	}
}

func (s *State) removeWorkload(w *Workload) {
	delete(s.workloads, w.UID)
	for _, a := range w.Addresses {
		k := NetworkAddr{Network: w.Network, Addr: a}
		l := slices.DeleteFunc(slices.Clone(s.byAddr[k]), func(o *Workload) bool { return o == w })
		if len(l) == 0 {
			delete(s.byAddr, k)
		} else {
			s.byAddr[k] = l
		}
	}
	for key := range w.Services {
		eps := slices.DeleteFunc(slices.Clone(s.endpoints[key]), func(e *Workload) bool { return e == w })
		if len(eps) == 0 {
			delete(s.endpoints, key)
		} else {
			s.endpoints[key] = eps
		}
	}
}

func (s *State) addService(svc *Service) {
	s.services[svc.Key] = svc
	for _, v := range svc.VIPs {
		s.vips[v] = svc
	}
	if svc.Hostname != "" {
		s.hostnames[svc.Hostname] = append(slices.Clone(s.hostnames[svc.Hostname]), svc)
	}
}

func (s *State) removeService(svc *Service) {
	delete(s.services, svc.Key)
	for _, v := range svc.VIPs {
		if s.vips[v] == svc {
			delete(s.vips, v)
		}
	}
	if svc.Hostname != "" {
		l := slices.DeleteFunc(slices.Clone(s.hostnames[svc.Hostname]), func(o *Service) bool { return o == svc })
		if len(l) == 0 {
			delete(s.hostnames, svc.Hostname)
		} else {
			s.hostnames[svc.Hostname] = l
		}
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *State) updatePolicies(set []xds.Resource, removed []string) error {
	var errs []error
	compiled := make([]*authz.Policy, 0, len(set))
	protos := make([]*apiwire.Authorization, 0, len(set))
	for _, r := range set {
		a := r.Authorization
		if a == nil {
			errs = append(errs, fmt.Errorf("%s: not an Authorization", r.Name))
			continue
		}
		p, err := authz.Compile(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name, err))
			continue
		}
		if p.Key != r.Name {
			errs = append(errs, fmt.Errorf("%s: policy is %s, want the resource name", r.Name, p.Key))
			continue
		}
		compiled = append(compiled, p)
		protos = append(protos, a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policies.Store(s.policies.Load().With(compiled, removed))
	for _, k := range removed {
		delete(s.policyResources, k)
	}
	for i, p := range compiled {
		s.policyResources[p.Key] = protos[i]
	}
	if len(compiled) > 0 || len(removed) > 0 {
		s.policyChangedLocked()
	}
	return errors.Join(errs...)
}

func (s *State) policyChangedLocked() {
	s.policyGen++
	close(s.policyChanged)
	s.policyChanged = make(chan struct{})
}

// PolicyChanges returns the current policy generation and a channel closed at the next change:
// a policy added, changed or removed, or a workload whose list of selected policies changed.
// A loop that acts on each change must compare generations, as OnPolicyChange does: a change
// made while it acts closes a channel it has not taken yet.
func (s *State) PolicyChanges() (generation uint64, changed <-chan struct{}) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.policyGen, s.policyChanged
}

// OnPolicyChange calls f with the new generation after each policy change past generation
// since, until ctx ends. A change made while f runs calls f again once it returns (changes made
// meanwhile share one call): one policy often arrives in two updates, its Authorization and the
// workloads that select it, and f must see the state after both.
func (s *State) OnPolicyChange(ctx context.Context, since uint64, f func(generation uint64)) {
	for ctx.Err() == nil {
		gen, changed := s.PolicyChanges()
		if gen != since {
			since = gen
			f(gen)
			continue
		}
		select {
		case <-ctx.Done():
		case <-changed:
		}
	}
}

// Policies returns the current policies.
func (s *State) Policies() *authz.Set { return s.policies.Load() }

// Authorize decides connection c to workload dst with the current policies: the GLOBAL ones,
// the NAMESPACE ones of dst's namespace and the ones dst lists. It does not allocate.
func (s *State) Authorize(dst *Workload, c *authz.Conn) authz.Decision {
	return s.policies.Load().Evaluate(dst.Namespace, dst.AuthorizationPolicies, c)
}

// WorkloadByUID returns the workload of a UID held locally.
func (s *State) WorkloadByUID(uid string) (*Workload, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	w, ok := s.workloads[uid]
	return w, ok
}

// LocalWorkload returns the workload of a pod by namespace and name, as ZDS names pods; the
// workloads of this node's pods are always held.
func (s *State) LocalWorkload(namespace, name string) (*Workload, bool) {
	return s.WorkloadByUID(s.cfg.ClusterID + "//Pod/" + namespace + "/" + name)
}

// WorkloadByAddr returns the workload holding ip in network, from what is held, without
// asking the control plane.
func (s *State) WorkloadByAddr(network string, ip netip.Addr) (*Workload, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l := s.byAddr[NetworkAddr{Network: network, Addr: ip.Unmap()}]
	if len(l) == 0 {
		return nil, false
	}
	return l[len(l)-1], true
}

// FindWorkload returns the workload holding ip in network, asking the control plane (by the
// alias "<network>/<ip>", waiting at most Config.LookupTimeout) when it is not held. It returns
// ErrNotFound when the mesh has none, and the lookup's error (a context error) when it does not
// answer in time.
func (s *State) FindWorkload(ctx context.Context, network string, ip netip.Addr) (*Workload, error) {
	ip = ip.Unmap()
	if w, ok := s.WorkloadByAddr(network, ip); ok {
		return w, nil
	}
	box := s.lookup.Load()
	if box == nil {
		return nil, fmt.Errorf("workload %s: %w", ip, ErrNotFound)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	if _, err := box.l.Lookup(ctx, network+"/"+ip.String()); err != nil {
		return nil, fmt.Errorf("looking up workload %s: %w", ip, err)
	}
	if w, ok := s.WorkloadByAddr(network, ip); ok {
		return w, nil
	}
	return nil, fmt.Errorf("workload %s: %w", ip, ErrNotFound)
}

// ServiceByVIP returns the service whose VIP is ip in network and its port; ok is false when
// no service has that VIP or the service has no such port. Every service is held (the
// wildcard subscription brings them all), so this never asks the control plane.
func (s *State) ServiceByVIP(network string, ip netip.Addr, port uint16) (*Service, Port, bool) {
	s.mu.RLock()
	svc := s.vips[NetworkAddr{Network: network, Addr: ip.Unmap()}]
	s.mu.RUnlock()
	if svc == nil {
		return nil, Port{}, false
	}
	p, ok := svc.Port(port)
	return svc, p, ok
}

// IsServiceVIP reports whether ip is a service VIP in network.
func (s *State) IsServiceVIP(network string, ip netip.Addr) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.vips[NetworkAddr{Network: network, Addr: ip.Unmap()}]
	return ok
}

// ServiceByKey returns a service by its key "<namespace>/<hostname>".
func (s *State) ServiceByKey(key string) (*Service, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	svc, ok := s.services[key]
	return svc, ok
}

// ServicesByHostname returns the services of a DNS name (e.g. web.shop.svc.cluster.local);
// usually one. The slice must not be changed.
func (s *State) ServicesByHostname(hostname string) []*Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hostnames[hostname]
}

// Endpoints returns the workloads backing a service, healthy or not, sorted by UID, from what
// is held. The first call for a service subscribes to it by name, so that the control plane
// sends the workloads behind it on other nodes too (and keeps sending changes), waiting at
// most Config.LookupTimeout. The slice must not be changed.
func (s *State) Endpoints(ctx context.Context, svc *Service) ([]*Workload, error) {
	s.mu.RLock()
	fetched := s.fetched[svc.Key]
	eps := s.endpoints[svc.Key]
	s.mu.RUnlock()
	if fetched {
		return eps, nil
	}
	box := s.lookup.Load()
	if box == nil {
		// Without a control plane to ask, what is held is all there is; ask again once a
		// Lookuper is set.
		return eps, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	if _, err := box.l.Subscribe(ctx, svc.Key); err != nil {
		return eps, fmt.Errorf("fetching endpoints of %s: %w", svc.Key, err)
	}
	s.mu.Lock()
	s.fetched[svc.Key] = true
	eps = s.endpoints[svc.Key]
	s.mu.Unlock()
	return eps, nil
}

// Endpoint is where one connection to a service goes.
type Endpoint struct {
	Workload *Workload
	// Addr is the workload's address (its first in the service's network) with the target port.
	Addr netip.AddrPort
}

// PickEndpoint chooses, at random, a healthy workload backing svc that serves servicePort, and
// translates the port: the workload's own resolved target port, else the service's, and the
// service port itself when the target is 0. It returns ErrNoHealthyEndpoint when there is none.
func (s *State) PickEndpoint(ctx context.Context, svc *Service, servicePort uint16) (Endpoint, error) {
	eps, err := s.Endpoints(ctx, svc)
	if err != nil && len(eps) == 0 {
		return Endpoint{}, err
	}
	sp, hasPort := svc.Port(servicePort)
	n := 0
	for _, w := range eps {
		if _, ok := targetPort(w, svc, sp, hasPort, servicePort); ok {
			n++
		}
	}
	if n == 0 {
		return Endpoint{}, fmt.Errorf("service %s port %d: %w", svc.Key, servicePort, ErrNoHealthyEndpoint)
	}
	pick := rand.IntN(n)
	for _, w := range eps {
		port, ok := targetPort(w, svc, sp, hasPort, servicePort)
		if !ok {
			continue
		}
		if pick == 0 {
			return Endpoint{Workload: w, Addr: netip.AddrPortFrom(w.Addresses[0], port)}, nil
		}
		pick--
	}
	return Endpoint{}, fmt.Errorf("service %s port %d: %w", svc.Key, servicePort, ErrNoHealthyEndpoint)
}

// targetPort is the port w serves servicePort of svc on, ok false when w is unhealthy, has no
// address, or does not serve the port.
func targetPort(w *Workload, svc *Service, sp Port, hasPort bool, servicePort uint16) (uint16, bool) {
	if !w.Healthy || len(w.Addresses) == 0 {
		return 0, false
	}
	if wp, listed := w.Services[svc.Key]; listed {
		for _, p := range wp {
			if p.ServicePort == servicePort {
				if p.TargetPort == 0 {
					return servicePort, true
				}
				return p.TargetPort, true
			}
		}
		return 0, false
	}
	if !hasPort {
		return 0, false
	}
	if sp.TargetPort == 0 {
		return servicePort, true
	}
	return sp.TargetPort, true
}
