package model

import (
	"maps"
	"slices"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/istiod-lite/model/authz"
	"github.com/ambit-mesh/ambit/istiod-lite/xds/store"
)

// PolicyStatus is what the model reports about one policy after converting it: the parts
// that ztunnel will not enforce as written, for the policy's status.
type PolicyStatus struct {
	Kind      string // AuthorizationPolicy or PeerAuthentication
	Namespace string
	Name      string
	// Generation is the object's metadata.generation the messages are about.
	Generation int64
	// Dropped is empty when everything is enforced as written.
	Dropped []string
}

// OnPolicyStatus registers fn to receive a PolicyStatus after every policy conversion. fn is
// called with the Index locked and must not call back into it.
func (x *Index) OnPolicyStatus(fn func(PolicyStatus)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.statusFn = fn
}

func (x *Index) reportStatus(s PolicyStatus) {
	if x.statusFn != nil {
		x.statusFn(s)
	}
}

// SetAuthorizationPolicy adds or updates an AuthorizationPolicy.
func (x *Index) SetAuthorizationPolicy(p *securityv1.AuthorizationPolicy) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(p.Namespace, p.Name)
	res := authz.ConvertAuthorizationPolicy(p, x.cfg.RootNamespace)
	x.reportStatus(PolicyStatus{Kind: "AuthorizationPolicy", Namespace: p.Namespace, Name: p.Name, Generation: p.Generation, Dropped: res.Dropped})
	var err error
	if res.Authorization != nil {
		err = x.out.Update(AuthorizationType, []store.Resource{{Name: res.Key(), Message: res.Authorization}}, nil)
	} else {
		err = x.out.Update(AuthorizationType, nil, []string{p.Namespace + "/" + p.Name})
	}
	if err != nil {
		return err
	}
	_, had := x.policies[k]
	if res.Authorization != nil && res.Authorization.GetScope() == security.Scope_WORKLOAD_SELECTOR {
		x.policies[k] = selectorPolicy{selector: labels.SelectorFromSet(res.Selector), global: p.Namespace == x.cfg.RootNamespace}
	} else {
		delete(x.policies, k)
	}
	_, has := x.policies[k]
	if !had && !has {
		return nil
	}
	return x.emit(x.podsAffectedBy(p.Namespace))
}

// DeleteAuthorizationPolicy removes an AuthorizationPolicy.
func (x *Index) DeleteAuthorizationPolicy(namespace, name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.out.Update(AuthorizationType, nil, []string{namespace + "/" + name}); err != nil {
		return err
	}
	k := key(namespace, name)
	if _, ok := x.policies[k]; !ok {
		return nil
	}
	delete(x.policies, k)
	return x.emit(x.podsAffectedBy(namespace))
}

// podsAffectedBy marks the pods whose policy list a policy in namespace can change: those of
// the namespace, or every pod for the root namespace.
func (x *Index) podsAffectedBy(namespace string) *pending {
	pend := newPending()
	for pk := range x.pods {
		if namespace == x.cfg.RootNamespace || pk.Namespace == namespace {
			pend.pods[pk] = struct{}{}
		}
	}
	return pend
}

// SetPeerAuthentication adds or updates a PeerAuthentication.
func (x *Index) SetPeerAuthentication(pa *securityv1.PeerAuthentication) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.peerAuths[key(pa.Namespace, pa.Name)] = pa
	return x.peerAuthChanged(pa.Namespace)
}

// DeletePeerAuthentication removes a PeerAuthentication.
func (x *Index) DeletePeerAuthentication(namespace, name string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := key(namespace, name)
	if _, ok := x.peerAuths[k]; !ok {
		return nil
	}
	delete(x.peerAuths, k)
	return x.peerAuthChanged(namespace)
}

// peerAuthChanged re-converts the PeerAuthentications a change in namespace can affect (all of
// them for the root namespace: they are few) and re-emits the pods whose policy lists follow.
func (x *Index) peerAuthChanged(namespace string) error {
	root := x.cfg.RootNamespace
	want := map[string]*security.Authorization{}
	if len(x.peerAuths) > 0 {
		want[root+"/"+authz.StaticStrictName] = authz.StaticStrictAuthorization(root)
	}
	for k, pa := range x.peerAuths {
		sel := authz.SelectPeerAuthentications(root, x.namespacePeerAuths(k.Namespace))
		res := authz.ConvertPeerAuthentication(pa, root, sel.Namespace, sel.Mesh)
		if k.Namespace == namespace || namespace == root {
			x.reportStatus(PolicyStatus{Kind: "PeerAuthentication", Namespace: pa.Namespace, Name: pa.Name, Generation: pa.Generation, Dropped: res.Dropped})
		}
		if res.Authorization != nil {
			want[res.Key()] = res.Authorization
		}
	}
	var set []store.Resource
	for _, name := range slices.Sorted(maps.Keys(want)) {
		set = append(set, store.Resource{Name: name, Message: want[name]})
	}
	var removed []string
	for name := range x.servedPeerAuth {
		if _, ok := want[name]; !ok {
			removed = append(removed, name)
		}
	}
	x.servedPeerAuth = map[string]struct{}{}
	for name := range want {
		x.servedPeerAuth[name] = struct{}{}
	}
	if err := x.out.Update(AuthorizationType, set, removed); err != nil {
		return err
	}
	return x.emit(x.podsAffectedBy(namespace))
}

// namespacePeerAuths are the PeerAuthentications without selector that can decide a workload
// of namespace's mode: the namespace's and the root namespace's.
func (x *Index) namespacePeerAuths(namespace string) []*securityv1.PeerAuthentication {
	var out []*securityv1.PeerAuthentication
	for k, pa := range x.peerAuths {
		if k.Namespace == namespace || k.Namespace == x.cfg.RootNamespace {
			out = append(out, pa)
		}
	}
	return out
}

// peerAuthKeysFor lists the PeerAuthentication-made policies pod p's workload must list.
func (x *Index) peerAuthKeysFor(namespace string, podLabels map[string]string) []string {
	if len(x.peerAuths) == 0 {
		return nil
	}
	var applicable []*securityv1.PeerAuthentication
	for k, pa := range x.peerAuths {
		switch {
		case k.Namespace == x.cfg.RootNamespace:
			applicable = append(applicable, pa)
		case k.Namespace != namespace:
		case pa.Spec.GetSelector() == nil || len(pa.Spec.GetSelector().GetMatchLabels()) == 0:
			applicable = append(applicable, pa)
		case labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels()).Matches(labels.Set(podLabels)):
			applicable = append(applicable, pa)
		}
	}
	return authz.WorkloadPolicyKeys(x.cfg.RootNamespace, authz.SelectPeerAuthentications(x.cfg.RootNamespace, applicable))
}
