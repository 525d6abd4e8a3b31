package echo

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string // substring; "" for no error
	}{
		{in: "", want: nil},
		{in: "8080", want: []int{8080}},
		{in: "8080,8081", want: []int{8080, 8081}},
		{in: " 8080 , 8081 ", want: []int{8080, 8081}},
		{in: "80a", wantErr: `port "80a" in "80a"`},
		{in: "8080,80a", wantErr: `port "80a" in "8080,80a"`},
		{in: "8080,", wantErr: `port "" in "8080,"`},
		{in: "0", wantErr: `port "0"`},
		{in: "65536", wantErr: `port "65536"`},
		{in: "-1", wantErr: `port "-1"`},
		{in: "8080,8080", wantErr: "port 8080 in \"8080,8080\": listed twice"},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePorts(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseHeader(t *testing.T) {
	tests := []struct {
		in, name, value string
		wantErr         bool
	}{
		{in: "X-Foo: bar", name: "X-Foo", value: "bar"},
		{in: "x-foo:bar:baz", name: "x-foo", value: "bar:baz"},
		{in: "X-Empty:", name: "X-Empty", value: ""},
		{in: "no colon", wantErr: true},
		{in: ": value", wantErr: true},
		{in: "two words: v", wantErr: true},
	}
	for _, tt := range tests {
		name, value, err := ParseHeader(tt.in)
		if (err != nil) != tt.wantErr || name != tt.name || value != tt.value {
			t.Errorf("ParseHeader(%q) = %q, %q, %v; want %q, %q, error %v", tt.in, name, value, err, tt.name, tt.value, tt.wantErr)
		}
	}
}
