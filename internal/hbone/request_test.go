package hbone

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

func TestParseRequest(t *testing.T) {
	local := netip.MustParseAddr("10.0.0.1")
	hf := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name       string
		fields     []hpack.HeaderField
		checkLocal bool
		want       string // authority, if accepted
		wantErr    string
	}{
		{name: "ok", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:8080", "forwarded", "for=x"), checkLocal: true, want: "10.0.0.1:8080"},
		{name: "other ip without check", fields: hf(":method", "CONNECT", ":authority", "10.9.9.9:80"), want: "10.9.9.9:80"},
		{name: "v4-mapped is local", fields: hf(":method", "CONNECT", ":authority", "[::ffff:10.0.0.1]:80"), checkLocal: true, want: "10.0.0.1:80"},
		{name: "ipv6", fields: hf(":method", "CONNECT", ":authority", "[fd00::1]:80"), want: "[fd00::1]:80"},
		{name: "other ip", fields: hf(":method", "CONNECT", ":authority", "10.9.9.9:80"), checkLocal: true, wantErr: "not this connection's destination"},
		{name: "GET", fields: hf(":method", "GET", ":authority", "10.0.0.1:80"), wantErr: `method "GET"`},
		{name: "no method", fields: hf(":authority", "10.0.0.1:80"), wantErr: `method ""`},
		{name: "path", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", ":path", "/"), wantErr: ":path not allowed"},
		{name: "extended connect", fields: hf(":method", "CONNECT", ":protocol", "websocket", ":authority", "10.0.0.1:80"), wantErr: ":protocol not allowed"},
		{name: "duplicate authority", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", ":authority", "10.0.0.1:81"), wantErr: "duplicate :authority"},
		{name: "duplicate method", fields: hf(":method", "CONNECT", ":method", "CONNECT", ":authority", "10.0.0.1:80"), wantErr: "duplicate :method"},
		{name: "host name", fields: hf(":method", "CONNECT", ":authority", "svc.ns:80"), wantErr: "not ip:port"},
		{name: "no port", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1"), wantErr: "not ip:port"},
		{name: "port 0", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:0"), wantErr: "not a usable"},
		{name: "unspecified", fields: hf(":method", "CONNECT", ":authority", "0.0.0.0:80"), wantErr: "not a usable"},
		{name: "zone", fields: hf(":method", "CONNECT", ":authority", "[fe80::1%eth0]:80"), wantErr: "not a usable"},
		{name: "loop 15001", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:15001"), wantErr: "port 15001"},
		{name: "loop 15006", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:15006"), wantErr: "port 15006"},
		{name: "loop 15008", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:15008"), wantErr: "port 15008"},
	}
	for _, tt := range tests {
		ap, hdr, err := parseRequest(tt.fields, local, tt.checkLocal)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: got %v, %v; want error containing %q", tt.name, ap, err, tt.wantErr)
			}
			continue
		}
		if err != nil || ap.String() != tt.want {
			t.Errorf("%s: got %v, %v; want %s", tt.name, ap, err, tt.want)
		}
		if tt.name == "ok" && hdr.Get("Forwarded") != "for=x" {
			t.Errorf("%s: header Forwarded: got %q, want for=x", tt.name, hdr.Get("Forwarded"))
		}
	}
}
