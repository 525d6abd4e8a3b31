package model

import (
	"maps"
	"slices"
	"sync"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

type set = map[types.NamespacedName]struct{}

// Index holds the Kubernetes objects the model reads and keeps out current. Each Set/Delete
// method recomputes only what depends on the object: its own resource and, through the
// indexes below, the resources whose content it changes. Safe for concurrent use.
type Index struct {
	cfg Config
	out *store.Store

	mu       sync.Mutex // guards the fields below
	pods     map[types.NamespacedName]*corev1.Pod
	services map[types.NamespacedName]*corev1.Service
	nodes    map[string]*corev1.Node
	// slices holds the EndpointSlices of Services without a selector, whose endpoints say
	// which pods back them.
	slices map[types.NamespacedName]*discoveryv1.EndpointSlice
	// members maps a Service to the pods that back it.
	members map[types.NamespacedName]set
	// podsByNode indexes pods by node, for node (locality) changes.
	podsByNode map[string]set
	// policies are the workload-selector policies, for the Workloads' policy lists.
	policies map[types.NamespacedName]selectorPolicy
	// peerAuths are the PeerAuthentications; servedPeerAuth the Authorizations made of them.
	peerAuths      map[types.NamespacedName]*securityv1.PeerAuthentication
	servedPeerAuth map[string]struct{}
	statusFn       func(PolicyStatus)
}

// selectorPolicy is what the Index needs of a policy that selects workloads by labels.
type selectorPolicy struct {
	selector labels.Selector
	// global policies live in the root namespace and select workloads in every namespace.
	global bool
}

// NewIndex returns an empty Index writing to out.
func NewIndex(cfg Config, out *store.Store) *Index {
	return &Index{
		cfg: cfg, out: out,
		pods: map[types.NamespacedName]*corev1.Pod{}, services: map[types.NamespacedName]*corev1.Service{},
		nodes: map[string]*corev1.Node{}, slices: map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		members: map[types.NamespacedName]set{}, podsByNode: map[string]set{},
		policies:  map[types.NamespacedName]selectorPolicy{},
		peerAuths: map[types.NamespacedName]*securityv1.PeerAuthentication{}, servedPeerAuth: map[string]struct{}{},
	}
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// pending collects what a change recomputes, emitted in one store update.
type pending struct {
	pods     set
	services set
}

func newPending() *pending { return &pending{pods: set{}, services: set{}} }

// SetPod adds or updates a pod.
func (x *Index) SetPod(p *corev1.Pod) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(p.Namespace, p.Name)
	pend := newPending()
	if old := x.pods[k]; old != nil && old.Spec.NodeName != p.Spec.NodeName {
		x.unindexNode(old.Spec.NodeName, k)
	}
	x.pods[k] = p
	if p.Spec.NodeName != "" {
		if x.podsByNode[p.Spec.NodeName] == nil {
			x.podsByNode[p.Spec.NodeName] = set{}
		}
		x.podsByNode[p.Spec.NodeName][k] = struct{}{}
	}
	pend.pods[k] = struct{}{}
	x.refreshMembership(k, pend)
	return x.emit(pend)
}

// DeletePod removes a pod.
func (x *Index) DeletePod(namespace, name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(namespace, name)
	old := x.pods[k]
	if old == nil {
		return nil
	}
	delete(x.pods, k)
	x.unindexNode(old.Spec.NodeName, k)
	pend := newPending()
	pend.pods[k] = struct{}{}
	x.refreshMembership(k, pend)
	return x.emit(pend)
}

func (x *Index) unindexNode(node string, k types.NamespacedName) {
	if s := x.podsByNode[node]; s != nil {
		delete(s, k)
		if len(s) == 0 {
			delete(x.podsByNode, node)
		}
	}
}

// refreshMembership updates which Services pod k backs (it may have appeared, gone, or
// changed labels) and marks the Services whose members changed.
func (x *Index) refreshMembership(k types.NamespacedName, pend *pending) {
	for sk, svc := range x.services {
		if sk.Namespace != k.Namespace {
			continue
		}
		_, was := x.members[sk][k]
		is := x.selects(svc, k)
		if was == is {
			continue
		}
		if is {
			x.members[sk][k] = struct{}{}
		} else {
			delete(x.members[sk], k)
		}
		pend.services[sk] = struct{}{}
	}
}

// selects reports whether svc is backed by pod k: by its selector, or for a Service without
// one by its EndpointSlices' pod references.
func (x *Index) selects(svc *corev1.Service, k types.NamespacedName) bool {
	p := x.pods[k]
	if p == nil || len(podAddresses(p)) == 0 {
		return false
	}
	if len(svc.Spec.Selector) > 0 {
		return labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(p.Labels))
	}
	for _, es := range x.slices {
		if es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		for _, ep := range es.Endpoints {
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" && ref.Name == k.Name {
				return true
			}
		}
	}
	return false
}

// SetService adds or updates a Service.
func (x *Index) SetService(s *corev1.Service) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(s.Namespace, s.Name)
	x.services[k] = s
	pend := newPending()
	pend.services[k] = struct{}{}
	x.recomputeMembers(k, pend)
	// Every member's services map carries this Service's ports: refresh them all.
	for pk := range x.members[k] {
		pend.pods[pk] = struct{}{}
	}
	return x.emit(pend)
}

// DeleteService removes a Service.
func (x *Index) DeleteService(namespace, name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(namespace, name)
	if _, ok := x.services[k]; !ok {
		return nil
	}
	pend := newPending()
	for pk := range x.members[k] {
		pend.pods[pk] = struct{}{}
	}
	delete(x.services, k)
	delete(x.members, k)
	pend.services[k] = struct{}{}
	return x.emit(pend)
}

// recomputeMembers recomputes a Service's members from scratch, marking the pods that
// joined or left.
func (x *Index) recomputeMembers(k types.NamespacedName, pend *pending) {
	svc := x.services[k]
	now := set{}
	for pk := range x.pods {
		if pk.Namespace == k.Namespace && x.selects(svc, pk) {
			now[pk] = struct{}{}
		}
	}
	for pk := range x.members[k] {
		if _, ok := now[pk]; !ok {
			pend.pods[pk] = struct{}{}
		}
	}
	for pk := range now {
		if _, ok := x.members[k][pk]; !ok {
			pend.pods[pk] = struct{}{}
		}
	}
	x.members[k] = now
}

// SetEndpointSlice adds or updates an EndpointSlice. Only slices of Services without a
// selector matter: a selector says which pods back a Service more directly.
func (x *Index) SetEndpointSlice(es *discoveryv1.EndpointSlice) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.slices[key(es.Namespace, es.Name)] = es
	return x.refreshSliceService(es.Namespace, es.Labels[discoveryv1.LabelServiceName])
}

// DeleteEndpointSlice removes an EndpointSlice.
func (x *Index) DeleteEndpointSlice(namespace, name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	es := x.slices[key(namespace, name)]
	if es == nil {
		return nil
	}
	delete(x.slices, key(namespace, name))
	return x.refreshSliceService(namespace, es.Labels[discoveryv1.LabelServiceName])
}

func (x *Index) refreshSliceService(namespace, service string) error {
	k := key(namespace, service)
	svc := x.services[k]
	if svc == nil || len(svc.Spec.Selector) > 0 {
		return nil
	}
	pend := newPending()
	pend.services[k] = struct{}{}
	x.recomputeMembers(k, pend)
	return x.emit(pend)
}

// SetNode adds or updates a Node (its labels give the locality of its pods).
func (x *Index) SetNode(n *corev1.Node) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.nodes[n.Name] = n
	pend := newPending()
	maps.Copy(pend.pods, x.podsByNode[n.Name])
	return x.emit(pend)
}

// DeleteNode removes a Node.
func (x *Index) DeleteNode(name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.nodes, name)
	pend := newPending()
	maps.Copy(pend.pods, x.podsByNode[name])
	return x.emit(pend)
}

// emit recomputes the marked resources and writes them to the store in one update.
func (x *Index) emit(pend *pending) error {
	var set []store.Resource
	var removed []string
	for pk := range pend.pods {
		uid := x.cfg.WorkloadUID(pk.Namespace, pk.Name)
		r, ok := x.workloadResource(pk)
		if !ok {
			removed = append(removed, uid)
			continue
		}
		set = append(set, r)
	}
	for sk := range pend.services {
		svc := x.services[sk]
		if svc == nil {
			removed = append(removed, x.cfg.ServiceKey(sk.Namespace, sk.Name))
			continue
		}
		set = append(set, x.serviceResource(sk, svc))
	}
	if len(set) == 0 && len(removed) == 0 {
		return nil
	}
	return x.out.Update(AddressType, set, removed)
}

func (x *Index) workloadResource(pk types.NamespacedName) (store.Resource, bool) {
	p := x.pods[pk]
	if p == nil {
		return store.Resource{}, false
	}
	addrs := podAddresses(p)
	if len(addrs) == 0 {
		return store.Resource{}, false
	}
	services := map[string]*workload.PortList{}
	for sk, members := range x.members {
		if _, ok := members[pk]; ok {
			services[x.cfg.ServiceKey(sk.Namespace, sk.Name)] = podPorts(x.services[sk], p)
		}
	}
	w := x.cfg.buildWorkload(p, addrs, services, x.policiesFor(p), x.nodes[p.Spec.NodeName])
	r := store.Resource{Name: w.Uid, Message: &workload.Address{Type: &workload.Address_Workload{Workload: w}}, Node: p.Spec.NodeName}
	for _, a := range addrs {
		r.Aliases = append(r.Aliases, x.cfg.AddressAlias(a))
	}
	return r, true
}

func (x *Index) serviceResource(sk types.NamespacedName, svc *corev1.Service) store.Resource {
	s := x.cfg.buildService(svc)
	r := store.Resource{Name: x.cfg.ServiceKey(sk.Namespace, sk.Name), Message: &workload.Address{Type: &workload.Address_Service{Service: s}}}
	for _, ip := range serviceIPs(svc) {
		r.Aliases = append(r.Aliases, x.cfg.AddressAlias(ip))
	}
	for pk := range x.members[sk] {
		r.Includes = append(r.Includes, x.cfg.WorkloadUID(pk.Namespace, pk.Name))
	}
	slices.Sort(r.Includes)
	return r
}

// policiesFor names the selector policies that apply to pod p.
func (x *Index) policiesFor(p *corev1.Pod) []string {
	var out []string
	for k, pol := range x.policies {
		if (k.Namespace == p.Namespace || pol.global) && pol.selector.Matches(labels.Set(p.Labels)) {
			out = append(out, k.Namespace+"/"+k.Name)
		}
	}
	out = append(out, x.peerAuthKeysFor(p.Namespace, p.Labels)...)
	slices.Sort(out)
	return out
}
