package authz

import (
	"fmt"

	"github.com/ambit-mesh/ambit/api/security"
)

// Result is the outcome of converting one policy object.
type Result struct {
	// Authorization is the resource to serve to ztunnels under Key(). It is nil when nothing of the
	// policy reaches ztunnel; Dropped then says why (except for a PeerAuthentication whose effect
	// is carried by the shared static STRICT policy, see WorkloadPolicyKeys).
	Authorization *security.Authorization

	// Dropped holds one human-readable message per part of the policy that ztunnel will not
	// enforce as written: what was dropped, where (rules[i].from[j].source.field, ...) and what
	// that does to the policy. Suitable for the policy's status.
	Dropped []string

	// Selector holds the workload selector's labels when Authorization has scope
	// WORKLOAD_SELECTOR: never nil then, and empty for a selector without labels (which selects
	// every workload it can reach). It is nil for the NAMESPACE and GLOBAL scopes and when
	// Authorization is nil. The caller lists Key() in Workload.authorization_policies of every
	// workload the labels select: in the policy's namespace, or in every namespace when the
	// policy is in the root namespace.
	Selector map[string]string

	// TargetRefs reports that the policy names targetRef or targetRefs: it is for waypoints or
	// gateways, never for ztunnel, so Authorization is nil.
	TargetRefs bool
}

// Key returns the xDS resource name of r.Authorization, "<namespace>/<name>", or "" when
// r.Authorization is nil.
func (r Result) Key() string {
	return Key(r.Authorization)
}

// Key returns the xDS resource name of a, "<namespace>/<name>", or "" when a is nil.
func Key(a *security.Authorization) string {
	if a == nil {
		return ""
	}
	return a.GetNamespace() + "/" + a.GetName()
}

func (r *Result) dropf(format string, args ...any) {
	r.Dropped = append(r.Dropped, fmt.Sprintf(format, args...))
}
