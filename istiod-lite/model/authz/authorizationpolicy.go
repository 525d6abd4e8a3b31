package authz

import (
	"maps"
	"strconv"

	"istio.io/api/annotation"
	"istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

// ConvertAuthorizationPolicy converts an AuthorizationPolicy into the Authorization that
// ztunnels enforce, keyed "<namespace>/<name>" like the policy. rootNamespace is the mesh's
// root namespace (istio-system by default): a policy there without a selector applies to the
// whole mesh.
//
// Only ALLOW and DENY policies without targetRefs reach ztunnel. Attributes ztunnel cannot see
// (HTTP and other L7 attributes) and values it cannot use (a malformed CIDR or port) make an ALLOW
// rule disappear, so the policy allows less; in a DENY rule they are dropped from the source,
// operation or condition that holds them, so the rule denies more: an alternative left with
// nothing to match matches every connection, and a rule left with no clause denies every
// connection the policy applies to. Both fail closed. Every such change is reported in
// Result.Dropped. An ALLOW policy left without rules is still returned: it matches nothing, so it
// denies every connection that no other ALLOW policy allows. p is not modified. A nil p gives an
// empty Result.
func ConvertAuthorizationPolicy(p *securityv1.AuthorizationPolicy, rootNamespace string) Result {
	var res Result
	if p == nil {
		return res
	}
	spec := &p.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		res.TargetRefs = true
		res.dropf("targetRefs: the policy applies to the waypoints or gateways it names and is enforced there, not by ztunnel")
		return res
	}

	var action security.Action
	switch spec.GetAction() {
	case v1beta1.AuthorizationPolicy_ALLOW:
		action = security.Action_ALLOW
	case v1beta1.AuthorizationPolicy_DENY:
		action = security.Action_DENY
	case v1beta1.AuthorizationPolicy_AUDIT, v1beta1.AuthorizationPolicy_CUSTOM:
		res.dropf("action %s: ztunnel does not support this action, so the policy is not enforced by ztunnel; "+
			"bind it to a waypoint with targetRefs", spec.GetAction())
		return res
	default:
		res.dropf("action %d: unknown value; expected ALLOW, DENY, AUDIT or CUSTOM; the policy is not sent to ztunnel",
			int32(spec.GetAction()))
		return res
	}

	a := &security.Authorization{
		Name:      p.Name,
		Namespace: p.Namespace,
		Action:    action,
		DryRun:    dryRun(p.Annotations, &res),
	}
	switch {
	case spec.GetSelector() != nil:
		a.Scope = security.Scope_WORKLOAD_SELECTOR
		res.Selector = maps.Clone(spec.GetSelector().GetMatchLabels())
		if res.Selector == nil {
			res.Selector = map[string]string{}
		}
	case rootNamespace != "" && p.Namespace == rootNamespace:
		a.Scope = security.Scope_GLOBAL
	default:
		a.Scope = security.Scope_NAMESPACE
	}

	for i, rule := range spec.GetRules() {
		if r := convertRule(action, i, rule, p.Namespace, &res); r != nil {
			a.Rules = append(a.Rules, r)
		}
	}
	if action == security.Action_ALLOW && len(a.Rules) == 0 && len(spec.GetRules()) > 0 {
		res.dropf("rules: no rule is left that ztunnel can enforce; the ALLOW policy matches nothing, " +
			"so it denies every connection that no other ALLOW policy allows")
	}
	res.Authorization = a
	return res
}

// dryRun reads the istio.io/dry-run annotation. A dry-run policy is sent with dry_run set:
// ztunnel evaluates and logs it without enforcing it. A value that is not a boolean is reported
// and the policy is enforced, as Istio does.
func dryRun(annotations map[string]string, res *Result) bool {
	name := annotation.IoIstioDryRun.Name
	v := annotations[name]
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		res.dropf("annotation %s: %q is not true or false; ignored, the policy is enforced", name, v)
		return false
	}
	return b
}
