package apiwire_test

import (
	"fmt"
	"reflect"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambit-mesh/ambit/api/security"
	"github.com/ambit-mesh/ambit/api/workload"
	"github.com/ambit-mesh/ambit/internal/apiwire"
)

// diff returns "" when got and want are equal, a nil and an empty slice or map counting as
// equal (protobuf makes no difference), else the path of the first difference.
func diff(got, want any) string {
	return diffValue("", reflect.ValueOf(got), reflect.ValueOf(want))
}

func diffValue(path string, g, w reflect.Value) string {
	if g.Kind() != w.Kind() {
		return fmt.Sprintf("%s: kind %v, want %v", path, g.Kind(), w.Kind())
	}
	switch g.Kind() {
	case reflect.Pointer:
		if g.IsNil() || w.IsNil() {
			if g.IsNil() != w.IsNil() {
				return fmt.Sprintf("%s: got %v, want %v", path, g, w)
			}
			return ""
		}
		return diffValue(path, g.Elem(), w.Elem())
	case reflect.Struct:
		for i := range g.NumField() {
			if d := diffValue(path+"."+g.Type().Field(i).Name, g.Field(i), w.Field(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice:
		if g.Len() != w.Len() {
			return fmt.Sprintf("%s: got %d elements, want %d", path, g.Len(), w.Len())
		}
		for i := range g.Len() {
			if d := diffValue(fmt.Sprintf("%s[%d]", path, i), g.Index(i), w.Index(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Map:
		if g.Len() != w.Len() {
			return fmt.Sprintf("%s: got %d entries, want %d", path, g.Len(), w.Len())
		}
		for _, k := range g.MapKeys() {
			wv := w.MapIndex(k)
			if !wv.IsValid() {
				return fmt.Sprintf("%s: unexpected key %v", path, k)
			}
			if d := diffValue(fmt.Sprintf("%s[%v]", path, k), g.MapIndex(k), wv); d != "" {
				return d
			}
		}
		return ""
	}
	if !reflect.DeepEqual(g.Interface(), w.Interface()) {
		return fmt.Sprintf("%s: got %v, want %v", path, g, w)
	}
	return ""
}

// The functions below restate a generated message as what apiwire should decode it to.

func wantWorkload(w *workload.Workload) *apiwire.Workload {
	out := &apiwire.Workload{
		UID: w.GetUid(), Name: w.GetName(), Namespace: w.GetNamespace(), Addresses: w.GetAddresses(),
		Network: w.GetNetwork(), TunnelProtocol: apiwire.TunnelProtocol(w.GetTunnelProtocol()),
		TrustDomain: w.GetTrustDomain(), ServiceAccount: w.GetServiceAccount(),
		Waypoint: wantGateway(w.GetWaypoint()), Node: w.GetNode(),
		CanonicalName: w.GetCanonicalName(), CanonicalRevision: w.GetCanonicalRevision(),
		WorkloadType: apiwire.WorkloadType(w.GetWorkloadType()), WorkloadName: w.GetWorkloadName(),
		AuthorizationPolicies: w.GetAuthorizationPolicies(), Status: apiwire.WorkloadStatus(w.GetStatus()),
		ClusterID: w.GetClusterId(),
	}
	if len(w.GetServices()) > 0 {
		out.Services = map[string][]apiwire.Port{}
		for k, pl := range w.GetServices() {
			out.Services[k] = wantPorts(pl.GetPorts())
		}
	}
	return out
}

func wantService(s *workload.Service) *apiwire.Service {
	out := &apiwire.Service{
		Name: s.GetName(), Namespace: s.GetNamespace(), Hostname: s.GetHostname(),
		Ports: wantPorts(s.GetPorts()), SubjectAltNames: s.GetSubjectAltNames(), Waypoint: wantGateway(s.GetWaypoint()),
	}
	for _, a := range s.GetAddresses() {
		out.Addresses = append(out.Addresses, *wantNetworkAddress(a))
	}
	return out
}

func wantPorts(in []*workload.Port) []apiwire.Port {
	var out []apiwire.Port
	for _, p := range in {
		out = append(out, apiwire.Port{ServicePort: p.GetServicePort(), TargetPort: p.GetTargetPort(), AppProtocol: apiwire.AppProtocol(p.GetAppProtocol())})
	}
	return out
}

func wantNetworkAddress(a *workload.NetworkAddress) *apiwire.NetworkAddress {
	if a == nil {
		return nil
	}
	out := &apiwire.NetworkAddress{Network: a.GetNetwork(), Address: a.GetAddress()}
	if a.Length != nil {
		l := a.GetLength()
		out.Length = &l
	}
	return out
}

func wantGateway(g *workload.GatewayAddress) *apiwire.GatewayAddress {
	if g == nil {
		return nil
	}
	out := &apiwire.GatewayAddress{HBONEMTLSPort: g.GetHboneMtlsPort(), Address: wantNetworkAddress(g.GetAddress())}
	if h := g.GetHostname(); h != nil {
		out.Hostname = &apiwire.NamespacedHostname{Namespace: h.GetNamespace(), Hostname: h.GetHostname()}
	}
	return out
}

func wantAuthorization(a *security.Authorization) *apiwire.Authorization {
	out := &apiwire.Authorization{
		Name: a.GetName(), Namespace: a.GetNamespace(), Scope: apiwire.Scope(a.GetScope()),
		Action: apiwire.Action(a.GetAction()), DryRun: a.GetDryRun(),
	}
	for _, r := range a.GetRules() {
		var rule apiwire.Rule
		for _, c := range r.GetClauses() {
			var clause apiwire.Clause
			for _, m := range c.GetMatches() {
				clause.Matches = append(clause.Matches, apiwire.Match{
					Namespaces: wantStrings(m.GetNamespaces()), NotNamespaces: wantStrings(m.GetNotNamespaces()),
					ServiceAccounts: wantSAs(m.GetServiceAccounts()), NotServiceAccounts: wantSAs(m.GetNotServiceAccounts()),
					Principals: wantStrings(m.GetPrincipals()), NotPrincipals: wantStrings(m.GetNotPrincipals()),
					SourceIPs: wantCIDRs(m.GetSourceIps()), NotSourceIPs: wantCIDRs(m.GetNotSourceIps()),
					DestinationIPs: wantCIDRs(m.GetDestinationIps()), NotDestinationIPs: wantCIDRs(m.GetNotDestinationIps()),
					DestinationPorts: m.GetDestinationPorts(), NotDestinationPorts: m.GetNotDestinationPorts(),
				})
			}
			rule.Clauses = append(rule.Clauses, clause)
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

func wantStrings(in []*security.StringMatch) []apiwire.StringMatch {
	var out []apiwire.StringMatch
	for _, s := range in {
		var m apiwire.StringMatch
		switch t := s.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			m = apiwire.StringMatch{Kind: apiwire.MatchExact, Value: t.Exact}
		case *security.StringMatch_Prefix:
			m = apiwire.StringMatch{Kind: apiwire.MatchPrefix, Value: t.Prefix}
		case *security.StringMatch_Suffix:
			m = apiwire.StringMatch{Kind: apiwire.MatchSuffix, Value: t.Suffix}
		case *security.StringMatch_Presence:
			m = apiwire.StringMatch{Kind: apiwire.MatchPresence}
		}
		out = append(out, m)
	}
	return out
}

func wantSAs(in []*security.ServiceAccountMatch) []apiwire.ServiceAccountMatch {
	var out []apiwire.ServiceAccountMatch
	for _, s := range in {
		out = append(out, apiwire.ServiceAccountMatch{Namespace: s.GetNamespace(), ServiceAccount: s.GetServiceAccount()})
	}
	return out
}

func wantCIDRs(in []*security.Address) []apiwire.CIDR {
	var out []apiwire.CIDR
	for _, a := range in {
		out = append(out, apiwire.CIDR{Address: a.GetAddress(), Length: a.GetLength()})
	}
	return out
}

var presence = &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
