package authz

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambit-mesh/ambit/api/security"
)

// stringMatch turns one policy pattern into a match: "*" any non-empty value, "*x" values ending
// in x, "x*" values starting with x, anything else that exact value. Principals stay as written
// (without "spiffe://"): ztunnel removes the scheme from the peer's identity before comparing.
func stringMatch(pattern string) *security.StringMatch {
	switch {
	case pattern == "*":
		return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
	case strings.HasPrefix(pattern, "*"):
		return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: pattern[1:]}}
	case strings.HasSuffix(pattern, "*"):
		return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: pattern[:len(pattern)-1]}}
	default:
		return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: pattern}}
	}
}

func stringMatches(patterns []string) []*security.StringMatch {
	if len(patterns) == 0 {
		return nil
	}
	out := make([]*security.StringMatch, 0, len(patterns))
	for _, p := range patterns {
		out = append(out, stringMatch(p))
	}
	return out
}

// serviceAccountMatches reads "<namespace>/<name>", or "<name>" for a service account of the
// policy's own namespace.
func serviceAccountMatches(values []string, policyNamespace string) []*security.ServiceAccountMatch {
	if len(values) == 0 {
		return nil
	}
	out := make([]*security.ServiceAccountMatch, 0, len(values))
	for _, v := range values {
		ns, name, ok := strings.Cut(v, "/")
		if !ok {
			ns, name = policyNamespace, v
		}
		out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: name})
	}
	return out
}

// parsePort reads a decimal port number, 0 to 65535.
func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", s)
	}
	return uint32(p), nil
}

// parseAddress reads an IP address ("10.1.2.3", "2001:db8::1") or a CIDR ("10.0.0.0/8") into raw
// address bytes (4 or 16) and a prefix length; a lone address gets the full length. Like Istio,
// host bits after the prefix are kept as written.
func parseAddress(s string) (*security.Address, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", s)
		}
		return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return nil, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	return &security.Address{Address: a.AsSlice(), Length: uint32(a.BitLen())}, nil
}
