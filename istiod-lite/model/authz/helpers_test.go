package authz

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/api/security"
)

const root = "istio-system"

// policy builds an AuthorizationPolicy; opts set anything beyond action and rules.
func policy(ns, name string, action v1beta1.AuthorizationPolicy_Action, rules []*v1beta1.Rule,
	opts ...func(*securityv1.AuthorizationPolicy),
) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.Action = action
	p.Spec.Rules = rules
	for _, o := range opts {
		o(p)
	}
	return p
}

func withSelector(labels map[string]string) func(*securityv1.AuthorizationPolicy) {
	return func(p *securityv1.AuthorizationPolicy) {
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: labels}
	}
}

func withAnnotation(k, v string) func(*securityv1.AuthorizationPolicy) {
	return func(p *securityv1.AuthorizationPolicy) { p.Annotations = map[string]string{k: v} }
}

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: s}}
}

func suffix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: s}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

// cidr builds an Address by hand: raw bytes as written and the prefix length.
func cidr(addr string, length uint32) *security.Address {
	return &security.Address{Address: netip.MustParseAddr(addr).AsSlice(), Length: length}
}

func sa(ns, name string) *security.ServiceAccountMatch {
	return &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: name}
}

func rule(clauses ...*security.Clause) *security.Rule { return &security.Rule{Clauses: clauses} }

// oneOf is a clause: any of the matches.
func oneOf(matches ...*security.Match) *security.Clause { return &security.Clause{Matches: matches} }

func from(sources ...*v1beta1.Source) []*v1beta1.Rule_From {
	var out []*v1beta1.Rule_From
	for _, s := range sources {
		out = append(out, &v1beta1.Rule_From{Source: s})
	}
	return out
}

func to(ops ...*v1beta1.Operation) []*v1beta1.Rule_To {
	var out []*v1beta1.Rule_To
	for _, o := range ops {
		out = append(out, &v1beta1.Rule_To{Operation: o})
	}
	return out
}

// checkAuthorization compares with proto.Equal and prints both sides as text on a difference.
func checkAuthorization(t *testing.T, got, want *security.Authorization) {
	t.Helper()
	if (got == nil) != (want == nil) || !proto.Equal(got, want) {
		t.Errorf("Authorization:\ngot  %s\nwant %s", text(got), text(want))
	}
}

func text(m proto.Message) string {
	if m == nil || !m.ProtoReflect().IsValid() {
		return "<nil>"
	}
	return prototext.MarshalOptions{}.Format(m)
}

func checkStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

func checkLabels(t *testing.T, got, want map[string]string) {
	t.Helper()
	if (got == nil) != (want == nil) || len(got) != len(want) {
		t.Errorf("Selector: got %v (nil %t), want %v (nil %t)", got, got == nil, want, want == nil)
		return
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Selector: got %v, want %v", got, want)
			return
		}
	}
}

// joinLines is a readability helper for long expected messages.
func joinLines(parts ...string) string { return strings.Join(parts, "") }
