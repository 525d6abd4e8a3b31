package authz

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/api/security"
)

func TestStringMatch(t *testing.T) {
	tests := []struct {
		in   string
		want *security.StringMatch
	}{
		{"*", presence()},
		{"*-suffix", suffix("-suffix")},
		{"prefix-*", prefix("prefix-")},
		{"exact", exact("exact")},
		{"", exact("")},
		{"**", suffix("*")},
		{"*mid*", suffix("mid*")},
		{"cluster.local/ns/a/sa/b", exact("cluster.local/ns/a/sa/b")},
		// Kept as written: ztunnel compares principals without the scheme, so this never matches,
		// as in Istio.
		{"spiffe://cluster.local/ns/a/sa/b", exact("spiffe://cluster.local/ns/a/sa/b")},
	}
	for _, tt := range tests {
		if got := stringMatch(tt.in); !proto.Equal(got, tt.want) {
			t.Errorf("stringMatch(%q): got %s, want %s", tt.in, text(got), text(tt.want))
		}
	}
	if got := stringMatches(nil); got != nil {
		t.Errorf("stringMatches(nil): got %v, want nil", got)
	}
}

func TestParsePort(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "80", want: 80},
		{in: "080", want: 80},
		{in: "65535", want: 65535},
		{in: "65536", wantErr: `"65536" is not a port number (0-65535)`},
		{in: "-1", wantErr: `"-1" is not a port number (0-65535)`},
		{in: "+1", wantErr: `"+1" is not a port number (0-65535)`},
		{in: " 80", wantErr: `" 80" is not a port number (0-65535)`},
		{in: "", wantErr: `"" is not a port number (0-65535)`},
		{in: "80-90", wantErr: `"80-90" is not a port number (0-65535)`},
	}
	for _, tt := range tests {
		got, err := parsePort(tt.in)
		switch {
		case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
			t.Errorf("parsePort(%q): got error %v, want %q", tt.in, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("parsePort(%q): got %d, %v, want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseAddress(t *testing.T) {
	tests := []struct {
		in      string
		want    *security.Address
		wantErr string
	}{
		{in: "1.2.3.4", want: &security.Address{Address: []byte{1, 2, 3, 4}, Length: 32}},
		{in: "10.0.0.0/8", want: &security.Address{Address: []byte{10, 0, 0, 0}, Length: 8}},
		{in: "10.1.2.3/8", want: &security.Address{Address: []byte{10, 1, 2, 3}, Length: 8}},
		{in: "0.0.0.0/0", want: &security.Address{Address: []byte{0, 0, 0, 0}, Length: 0}},
		{in: "::1", want: &security.Address{Address: []byte{15: 1}, Length: 128}},
		{in: "2001:db8::/32", want: &security.Address{Address: []byte{0x20, 0x01, 0x0d, 0xb8, 15: 0}, Length: 32}},
		{in: "::ffff:1.2.3.4", want: &security.Address{Address: []byte{10: 0xff, 11: 0xff, 12: 1, 13: 2, 14: 3, 15: 4}, Length: 128}},
		{in: "10.0.0.0/33", wantErr: `"10.0.0.0/33" is not a CIDR`},
		{in: "10.0.0.0/", wantErr: `"10.0.0.0/" is not a CIDR`},
		{in: "/8", wantErr: `"/8" is not a CIDR`},
		{in: "fe80::1%eth0/64", wantErr: `"fe80::1%eth0/64" is not a CIDR`},
		{in: "fe80::1%eth0", wantErr: `"fe80::1%eth0" is not an IP address or CIDR`},
		{in: "1.2.3", wantErr: `"1.2.3" is not an IP address or CIDR`},
		{in: "", wantErr: `"" is not an IP address or CIDR`},
		{in: "example.com", wantErr: `"example.com" is not an IP address or CIDR`},
	}
	for _, tt := range tests {
		got, err := parseAddress(tt.in)
		switch {
		case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
			t.Errorf("parseAddress(%q): got error %v, want %q", tt.in, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || !proto.Equal(got, tt.want)):
			t.Errorf("parseAddress(%q): got %s, %v, want %s", tt.in, text(got), err, text(tt.want))
		}
	}
}
