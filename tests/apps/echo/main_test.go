package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestParseServerFlags(t *testing.T) {
	tests := []struct {
		args     []string
		wantHTTP []int
		wantTCP  []int
		wantErr  string // in the flag output; "" for no error
	}{
		{args: []string{"--http", "8080,8081", "--tcp", "9000"}, wantHTTP: []int{8080, 8081}, wantTCP: []int{9000}},
		{args: []string{"-http=8080"}, wantHTTP: []int{8080}},
		{args: []string{"--http", "80a"}, wantErr: `invalid value "80a" for flag -http: port "80a" in "80a"`},
		{args: []string{"--pod", "p"}, wantErr: "no ports"},
		{args: []string{"--http", "8080", "extra"}, wantErr: `unexpected arguments ["extra"]`},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		cfg, err := parseServerFlagsTo(tt.args, &out)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(out.String(), tt.wantErr) {
				t.Errorf("args %q: error %v, output %q; want output containing %q", tt.args, err, out.String(), tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(cfg.HTTPPorts, tt.wantHTTP) || !slices.Equal(cfg.TCPPorts, tt.wantTCP) {
			t.Errorf("args %q: http %v tcp %v, %v; want http %v tcp %v", tt.args, cfg.HTTPPorts, cfg.TCPPorts, err, tt.wantHTTP, tt.wantTCP)
		}
	}
}

func TestServerIdentityFromEnv(t *testing.T) {
	t.Setenv("POD_NAME", "echo-v2-xyz")
	t.Setenv("POD_NAMESPACE", "ns2")
	t.Setenv("SERVICE_ACCOUNT", "sa2")
	t.Setenv("VERSION", "v2")
	cfg, err := parseServerFlagsTo([]string{"--http", "8080", "--version", "v3"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.Identity
	if id.Pod != "echo-v2-xyz" || id.Namespace != "ns2" || id.ServiceAccount != "sa2" || id.Version != "v3" {
		t.Errorf("identity = %+v, want env values with version v3 from the flag", id)
	}
}
