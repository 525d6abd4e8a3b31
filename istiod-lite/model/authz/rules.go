package authz

import (
	"fmt"
	"strings"

	"istio.io/api/security/v1beta1"

	"github.com/ambit-mesh/ambit/api/security"
)

// Condition keys ztunnel can evaluate; every other `when` key needs a waypoint.
const (
	keySourceIP        = "source.ip"
	keySourceNamespace = "source.namespace"
	keySourcePrincipal = "source.principal"
	keyDestinationIP   = "destination.ip"
	keyDestinationPort = "destination.port"
)

// alternative is one source, operation or condition of a rule, converted into a Match, with what
// could not be converted.
type alternative struct {
	path        string // where it is in the policy: rules[i].from[j].source
	match       *security.Match
	unsupported []string // paths of attributes ztunnel cannot evaluate
	invalid     []string // "path: what is wrong with a value"
	// emptyCondition says what is missing from a condition that is empty as written (null, or an
	// L4 key without values or notValues). The API requires a key and a value, so unlike an empty
	// source or operation, which the API reads as "any", it has no meaning of its own.
	emptyCondition string
}

// clause is one AND-ed part of a rule: the rule's to, its from, or one of its when conditions.
type clause struct {
	name         string // to, from, when[k]
	alternatives []alternative
}

// convertRule converts rules[i] of a policy, or returns nil when nothing of it can be enforced.
// The clauses come in Istio's order: to, from, then one per condition.
func convertRule(action security.Action, i int, rule *v1beta1.Rule, policyNamespace string, res *Result) *security.Rule {
	path := fmt.Sprintf("rules[%d]", i)
	if rule == nil {
		// A null rule reads as an empty one, which matches everything: an ALLOW drops it, a DENY
		// keeps it, so that neither fails open.
		if action == security.Action_ALLOW {
			res.dropf("%s: null rule; dropped", path)
			return nil
		}
		res.dropf("%s: null rule; read as an empty rule, which matches every connection the policy applies to", path)
		return &security.Rule{}
	}
	var clauses []clause
	if len(rule.GetTo()) > 0 {
		c := clause{name: "to"}
		for j, to := range rule.GetTo() {
			c.alternatives = append(c.alternatives, operation(fmt.Sprintf("%s.to[%d].operation", path, j), to.GetOperation()))
		}
		clauses = append(clauses, c)
	}
	if len(rule.GetFrom()) > 0 {
		c := clause{name: "from"}
		for j, from := range rule.GetFrom() {
			c.alternatives = append(c.alternatives, source(fmt.Sprintf("%s.from[%d].source", path, j), from.GetSource(), policyNamespace))
		}
		clauses = append(clauses, c)
	}
	for k, cond := range rule.GetWhen() {
		name := fmt.Sprintf("when[%d]", k)
		clauses = append(clauses, clause{name: name, alternatives: []alternative{condition(path+"."+name, cond)}})
	}
	if action == security.Action_ALLOW {
		return allowRule(path, clauses, res)
	}
	return denyRule(path, clauses, res)
}

// allowRule keeps a rule only if ztunnel can enforce all of it: leaving anything out would let
// the rule allow more than written.
func allowRule(path string, clauses []clause, res *Result) *security.Rule {
	var problems []string
	for _, c := range clauses {
		for _, alt := range c.alternatives {
			for _, u := range alt.unsupported {
				problems = append(problems, u+": ztunnel cannot evaluate it")
			}
			problems = append(problems, alt.invalid...)
			if len(alt.unsupported) == 0 && len(alt.invalid) == 0 && matchIsEmpty(alt.match) {
				problems = append(problems, alt.path+": empty")
			}
		}
	}
	if len(problems) > 0 {
		res.dropf("%s: dropped from the ALLOW policy, which now allows less than requested: %s%s",
			path, strings.Join(problems, "; "), waypointHint(clauses))
		return nil
	}
	out := &security.Rule{}
	for _, c := range clauses {
		cl := &security.Clause{}
		for _, alt := range c.alternatives {
			cl.Matches = append(cl.Matches, alt.match)
		}
		out.Clauses = append(out.Clauses, cl)
	}
	return out
}

// denyRule drops what ztunnel cannot evaluate and keeps the L4 rest (DESIGN.md section 8): a
// DENY must never let through what it was written to refuse, so without its HTTP attributes
// it matches more, never less. An alternative left with nothing to match therefore matches
// every connection, and so does the clause holding it: the clause is left out of the rule. A
// rule left with no clause denies every connection its policy applies to. Malformed values and
// empty conditions are ignored the same way.
//
// This is stricter than Istio ambient, where such an alternative matches nothing and the DENY
// has no effect at ztunnel (its status says so since istio/istio#61166); Istio sidecars on TCP
// traffic, and Ambit, fail closed instead.
func denyRule(path string, clauses []clause, res *Result) *security.Rule {
	var widened []string
	changed := false // a clause was left out because of what was dropped or ignored
	out := &security.Rule{}
	for _, c := range clauses {
		cl := &security.Clause{}
		matchesAll, asWritten := false, false
		for _, alt := range c.alternatives {
			for _, inv := range alt.invalid {
				res.dropf("%s; the value is ignored", inv)
			}
			widened = append(widened, alt.unsupported...)
			if !matchIsEmpty(alt.match) {
				cl.Matches = append(cl.Matches, alt.match)
				continue
			}
			matchesAll = true
			switch {
			case alt.emptyCondition != "":
				res.dropf("%s: %s; the condition is ignored", alt.path, alt.emptyCondition)
			case len(alt.unsupported) == 0 && len(alt.invalid) == 0:
				asWritten = true // an empty source or operation: the API reads it as "any"
			}
		}
		if !matchesAll {
			out.Clauses = append(out.Clauses, cl)
		} else if !asWritten {
			changed = true
		}
	}
	switch {
	case len(widened) > 0:
		scope := "which now matches more than requested"
		if len(out.Clauses) == 0 {
			scope = "which now matches every connection the policy applies to"
		}
		res.dropf("%s: ztunnel cannot evaluate %s; dropped from the DENY rule, %s%s",
			path, strings.Join(widened, ", "), scope, waypointHint(clauses))
	case changed && len(out.Clauses) == 0:
		res.dropf("%s: nothing is left to match without what is ignored, so the DENY rule matches every "+
			"connection the policy applies to", path)
	}
	return out
}

func waypointHint(clauses []clause) string {
	for _, c := range clauses {
		for _, alt := range c.alternatives {
			if len(alt.unsupported) > 0 {
				return " (enforce L7 attributes with a waypoint: a policy with targetRefs)"
			}
		}
	}
	return ""
}

func source(path string, s *v1beta1.Source, policyNamespace string) alternative {
	alt := alternative{path: path, match: &security.Match{}}
	if s == nil {
		return alt
	}
	alt.unsupportedIf(path+".requestPrincipals", s.GetRequestPrincipals())
	alt.unsupportedIf(path+".notRequestPrincipals", s.GetNotRequestPrincipals())
	alt.unsupportedIf(path+".remoteIpBlocks", s.GetRemoteIpBlocks())
	alt.unsupportedIf(path+".notRemoteIpBlocks", s.GetNotRemoteIpBlocks())
	alt.unsupportedIf(path+".trustDomains", s.GetTrustDomains())
	alt.unsupportedIf(path+".notTrustDomains", s.GetNotTrustDomains())
	m := alt.match
	m.Principals = stringMatches(s.GetPrincipals())
	m.NotPrincipals = stringMatches(s.GetNotPrincipals())
	m.Namespaces = stringMatches(s.GetNamespaces())
	m.NotNamespaces = stringMatches(s.GetNotNamespaces())
	m.ServiceAccounts = serviceAccountMatches(s.GetServiceAccounts(), policyNamespace)
	m.NotServiceAccounts = serviceAccountMatches(s.GetNotServiceAccounts(), policyNamespace)
	m.SourceIps = alt.addresses(path+".ipBlocks", s.GetIpBlocks())
	m.NotSourceIps = alt.addresses(path+".notIpBlocks", s.GetNotIpBlocks())
	return alt
}

func operation(path string, op *v1beta1.Operation) alternative {
	alt := alternative{path: path, match: &security.Match{}}
	if op == nil {
		return alt
	}
	alt.unsupportedIf(path+".hosts", op.GetHosts())
	alt.unsupportedIf(path+".notHosts", op.GetNotHosts())
	alt.unsupportedIf(path+".methods", op.GetMethods())
	alt.unsupportedIf(path+".notMethods", op.GetNotMethods())
	alt.unsupportedIf(path+".paths", op.GetPaths())
	alt.unsupportedIf(path+".notPaths", op.GetNotPaths())
	alt.match.DestinationPorts = alt.ports(path+".ports", op.GetPorts())
	alt.match.NotDestinationPorts = alt.ports(path+".notPorts", op.GetNotPorts())
	return alt
}

// condition converts one `when` entry: values become the positive field, notValues the not_
// field of the same Match.
func condition(path string, c *v1beta1.Condition) alternative {
	alt := alternative{path: path, match: &security.Match{}}
	if c == nil {
		alt.emptyCondition = "null condition"
		return alt
	}
	m := alt.match
	vals, notVals := c.GetValues(), c.GetNotValues()
	switch c.GetKey() {
	case keySourceIP:
		m.SourceIps = alt.addresses(path+".values", vals)
		m.NotSourceIps = alt.addresses(path+".notValues", notVals)
	case keySourceNamespace:
		m.Namespaces = stringMatches(vals)
		m.NotNamespaces = stringMatches(notVals)
	case keySourcePrincipal:
		m.Principals = stringMatches(vals)
		m.NotPrincipals = stringMatches(notVals)
	case keyDestinationIP:
		m.DestinationIps = alt.addresses(path+".values", vals)
		m.NotDestinationIps = alt.addresses(path+".notValues", notVals)
	case keyDestinationPort:
		m.DestinationPorts = alt.ports(path+".values", vals)
		m.NotDestinationPorts = alt.ports(path+".notValues", notVals)
	default:
		alt.unsupported = append(alt.unsupported, fmt.Sprintf("%s key %q", path, c.GetKey()))
		return alt
	}
	if len(vals) == 0 && len(notVals) == 0 {
		alt.emptyCondition = "no values or notValues"
	}
	return alt
}

func (alt *alternative) unsupportedIf(path string, values []string) {
	if len(values) > 0 {
		alt.unsupported = append(alt.unsupported, path)
	}
}

func (alt *alternative) addresses(path string, values []string) []*security.Address {
	var out []*security.Address
	for i, v := range values {
		a, err := parseAddress(v)
		if err != nil {
			alt.invalid = append(alt.invalid, fmt.Sprintf("%s[%d]: %v", path, i, err))
			continue
		}
		out = append(out, a)
	}
	return out
}

func (alt *alternative) ports(path string, values []string) []uint32 {
	var out []uint32
	for i, v := range values {
		p, err := parsePort(v)
		if err != nil {
			alt.invalid = append(alt.invalid, fmt.Sprintf("%s[%d]: %v", path, i, err))
			continue
		}
		out = append(out, p)
	}
	return out
}

// matchIsEmpty reports whether m constrains nothing that ztunnel evaluates. ztunnel skips such a
// Match: it never matches. So it is never sent: an ALLOW drops its rule, a DENY its clause.
func matchIsEmpty(m *security.Match) bool {
	return len(m.GetNamespaces()) == 0 && len(m.GetNotNamespaces()) == 0 &&
		len(m.GetServiceAccounts()) == 0 && len(m.GetNotServiceAccounts()) == 0 &&
		len(m.GetPrincipals()) == 0 && len(m.GetNotPrincipals()) == 0 &&
		len(m.GetSourceIps()) == 0 && len(m.GetNotSourceIps()) == 0 &&
		len(m.GetDestinationIps()) == 0 && len(m.GetNotDestinationIps()) == 0 &&
		len(m.GetDestinationPorts()) == 0 && len(m.GetNotDestinationPorts()) == 0
}
