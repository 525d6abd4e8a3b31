package authz

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

// Names of the Authorizations made from PeerAuthentications. Both contain '_', which Kubernetes
// names cannot, so they never collide with an AuthorizationPolicy.
const (
	// StaticStrictName is the DENY policy, in the root namespace, that every workload whose
	// effective mTLS mode is STRICT on all ports lists.
	StaticStrictName = "istio_converted_static_strict"
	// ConvertedPeerAuthenticationPrefix starts the name of the policy made from a workload
	// PeerAuthentication whose port-level modes differ from the workload's mode.
	ConvertedPeerAuthenticationPrefix = "converted_peer_authentication_"
)

// StaticStrictAuthorization returns the policy "<rootNamespace>/istio_converted_static_strict":
// DENY every connection whose peer has no identity (plaintext). Serve it whenever at least one
// PeerAuthentication exists; WorkloadPolicyKeys says which workloads list it.
func StaticStrictAuthorization(rootNamespace string) *security.Authorization {
	return &security.Authorization{
		Name:      StaticStrictName,
		Namespace: rootNamespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Rules:     []*security.Rule{{Clauses: []*security.Clause{noIdentity()}}},
	}
}

// PeerAuthentications are the policies that decide one workload's mTLS modes; any may be nil.
type PeerAuthentications struct {
	// Mesh is the mesh-wide policy: in the root namespace, without a selector.
	Mesh *securityv1.PeerAuthentication
	// Namespace is the policy of the workload's namespace without a selector.
	Namespace *securityv1.PeerAuthentication
	// Workload is a policy of the workload's namespace whose selector matches the workload.
	Workload *securityv1.PeerAuthentication
}

// SelectPeerAuthentications picks the deciding policies for one workload out of applicable: the
// root namespace's policies without a selector, and the policies of the workload's namespace
// that have no selector or a selector matching the workload's labels (the caller filters by
// namespace and labels). Where several compete for a level the oldest wins, ties broken by name
// then namespace, as Istio does. Policies with a selector in the root namespace are ignored, as in
// Istio ambient. A selector without labels counts as no selector.
func SelectPeerAuthentications(rootNamespace string, applicable []*securityv1.PeerAuthentication) PeerAuthentications {
	var sel PeerAuthentications
	for _, pa := range applicable {
		if pa == nil {
			continue
		}
		switch {
		case !hasSelector(pa) && pa.Namespace == rootNamespace:
			sel.Mesh = older(sel.Mesh, pa)
		case !hasSelector(pa):
			sel.Namespace = older(sel.Namespace, pa)
		case pa.Namespace != rootNamespace:
			sel.Workload = older(sel.Workload, pa)
		}
	}
	return sel
}

// WorkloadPolicyKeys returns, sorted, the keys of the PeerAuthentication-made policies the
// workload lists in Workload.authorization_policies: the static STRICT policy when the workload
// is STRICT on every port, or the converted policy of p.Workload when its port-level modes
// differ from the workload's mode (ConvertPeerAuthentication(p.Workload, rootNamespace,
// p.Namespace, p.Mesh) returns exactly that policy). p is normally SelectPeerAuthentications'
// result.
func WorkloadPolicyKeys(rootNamespace string, p PeerAuthentications) []string {
	wl := p.Workload
	if wl != nil && (!hasSelector(wl) || wl.Namespace == rootNamespace) {
		wl = nil
	}
	plan := planMTLS(p.Mesh, p.Namespace, wl, nil)
	var keys []string
	if plan.strict && len(plan.exceptions) == 0 {
		keys = append(keys, rootNamespace+"/"+StaticStrictName)
	}
	if len(plan.exceptions) > 0 {
		keys = append(keys, wl.Namespace+"/"+ConvertedPeerAuthenticationPrefix+wl.Name)
	}
	slices.Sort(keys)
	return keys
}

// ConvertPeerAuthentication converts a workload PeerAuthentication (one with a selector, outside
// the root namespace) whose port-level modes differ from the workload's effective mode into a
// DENY Authorization named "converted_peer_authentication_<name>" in pa's namespace.
// namespaceWide and meshWide are the deciding policies without selector of pa's namespace and of
// the root namespace (see SelectPeerAuthentications); either may be nil.
//
// Every other PeerAuthentication gives a nil Authorization: its effect reaches ztunnel through
// the static STRICT policy (see WorkloadPolicyKeys), or it has none. Dropped reports modes and
// ports that cannot be applied as written.
func ConvertPeerAuthentication(pa *securityv1.PeerAuthentication, rootNamespace string, namespaceWide, meshWide *securityv1.PeerAuthentication) Result {
	var res Result
	if pa == nil {
		return res
	}
	spec := &pa.Spec
	if !hasSelector(pa) {
		mode(spec.GetMtls(), "mtls.mode", &res)
		if len(spec.GetPortLevelMtls()) > 0 {
			res.dropf("portLevelMtls: ignored: port-level modes need a selector with labels")
		}
		return res
	}
	if pa.Namespace == rootNamespace {
		res.dropf("selector: a PeerAuthentication with a selector in the root namespace %q is ignored in ambient mode, as in Istio",
			rootNamespace)
		return res
	}
	plan := planMTLS(meshWide, namespaceWide, pa, &res)
	if len(plan.exceptions) == 0 {
		return res
	}
	a := &security.Authorization{
		Name:      ConvertedPeerAuthenticationPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
	}
	if plan.strict {
		// One rule: no identity AND not one of the exempt ports. Istio puts the identity clause
		// first when the workload policy itself says STRICT and last when STRICT is inherited.
		r := &security.Rule{}
		if plan.ownStrict {
			r.Clauses = append(r.Clauses, noIdentity())
		}
		for _, port := range plan.exceptions {
			r.Clauses = append(r.Clauses, &security.Clause{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
		if !plan.ownStrict {
			r.Clauses = append(r.Clauses, noIdentity())
		}
		a.Rules = []*security.Rule{r}
	} else {
		// One rule per STRICT port: that port AND no identity.
		for _, port := range plan.exceptions {
			a.Rules = append(a.Rules, &security.Rule{Clauses: []*security.Clause{{Matches: []*security.Match{{
				DestinationPorts: []uint32{port},
				NotPrincipals:    []*security.StringMatch{stringMatch("*")},
			}}}}})
		}
	}
	res.Authorization = a
	res.Selector = maps.Clone(spec.GetSelector().GetMatchLabels())
	return res
}

// mtlsPlan is a workload's effective mTLS: strict is the mode of ports without their own mode;
// exceptions are the ports, ascending, whose mode differs from it.
type mtlsPlan struct {
	strict     bool
	ownStrict  bool // the workload policy itself says STRICT (not inherited)
	exceptions []uint32
}

// planMTLS resolves inheritance: mesh, then namespace, then workload, then port; UNSET inherits,
// no policy at all means PERMISSIVE, and DISABLE counts as PERMISSIVE (ztunnel cannot turn mTLS
// off; it can only accept plaintext). Messages about wl go to res when res is not nil.
func planMTLS(mesh, ns, wl *securityv1.PeerAuthentication, res *Result) mtlsPlan {
	var plan mtlsPlan
	if mesh != nil {
		plan.strict = mode(mesh.Spec.GetMtls(), "", nil) == v1beta1.PeerAuthentication_MutualTLS_STRICT
	}
	if ns != nil {
		if m := mode(ns.Spec.GetMtls(), "", nil); m != v1beta1.PeerAuthentication_MutualTLS_UNSET {
			plan.strict = m == v1beta1.PeerAuthentication_MutualTLS_STRICT
		}
	}
	if wl == nil {
		return plan
	}
	if m := mode(wl.Spec.GetMtls(), "mtls.mode", res); m != v1beta1.PeerAuthentication_MutualTLS_UNSET {
		plan.strict = m == v1beta1.PeerAuthentication_MutualTLS_STRICT
		plan.ownStrict = plan.strict
	}
	ports := slices.Sorted(maps.Keys(wl.Spec.GetPortLevelMtls()))
	for _, port := range ports {
		m := mode(wl.Spec.GetPortLevelMtls()[port], portField(port), res)
		if m == v1beta1.PeerAuthentication_MutualTLS_UNSET {
			continue
		}
		if port == 0 || port > 65535 {
			if res != nil {
				res.dropf("%s: not a port number (1-65535); ignored", portField(port))
			}
			continue
		}
		if (m == v1beta1.PeerAuthentication_MutualTLS_STRICT) != plan.strict {
			plan.exceptions = append(plan.exceptions, port)
		}
	}
	return plan
}

// mode returns the mode of m, with DISABLE turned into PERMISSIVE and unknown values into UNSET.
// Both are reported as field into res, when res is not nil.
func mode(m *v1beta1.PeerAuthentication_MutualTLS, field string, res *Result) v1beta1.PeerAuthentication_MutualTLS_Mode {
	switch md := m.GetMode(); md {
	case v1beta1.PeerAuthentication_MutualTLS_UNSET, v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE,
		v1beta1.PeerAuthentication_MutualTLS_STRICT:
		return md
	case v1beta1.PeerAuthentication_MutualTLS_DISABLE:
		if res != nil {
			res.dropf("%s: DISABLE: ztunnel always uses mTLS between meshed workloads; treated as PERMISSIVE (plaintext is accepted)", field)
		}
		return v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
	default:
		if res != nil {
			res.dropf("%s: unknown value %d; expected UNSET, DISABLE, PERMISSIVE or STRICT; treated as UNSET (inherited)", field, int32(md))
		}
		return v1beta1.PeerAuthentication_MutualTLS_UNSET
	}
}

func portField(port uint32) string {
	return "portLevelMtls[" + strconv.FormatUint(uint64(port), 10) + "].mode"
}

// noIdentity is the clause "the peer has no identity": no principal at all matches.
func noIdentity() *security.Clause {
	return &security.Clause{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{stringMatch("*")}}}}
}

func hasSelector(pa *securityv1.PeerAuthentication) bool {
	return len(pa.Spec.GetSelector().GetMatchLabels()) > 0
}

// older returns the one of a and b that Istio lets decide: the older, then the first by name,
// then by namespace. a may be nil.
func older(a, b *securityv1.PeerAuthentication) *securityv1.PeerAuthentication {
	if a == nil {
		return b
	}
	if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
		if c < 0 {
			return a
		}
		return b
	}
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		if c < 0 {
			return a
		}
		return b
	}
	if b.Namespace < a.Namespace {
		return b
	}
	return a
}
