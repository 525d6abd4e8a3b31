package dns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    []string
		wantErr bool
	}{
		{name: "kube-dns", text: "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n", want: []string{"10.96.0.10:53"}},
		{name: "several and v6", text: "nameserver 1.1.1.1\nnameserver 2606:4700::1111 # cf\nnameserver ::ffff:8.8.8.8\n", want: []string{"1.1.1.1:53", "[2606:4700::1111]:53", "8.8.8.8:53"}},
		{name: "comments and junk ignored", text: "# nameserver 9.9.9.9\n; nameserver 9.9.9.9\nnameserver\ndomain x\nnameserver 10.0.0.1\n", want: []string{"10.0.0.1:53"}},
		{name: "zone", text: "nameserver fe80::1%eth0\n", want: []string{"[fe80::1%eth0]:53"}},
		{name: "none", text: "search x\n", wantErr: true},
		{name: "bad address", text: "nameserver dns.example\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups, err := ParseResolvConf(strings.NewReader(tt.text))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tt.wantErr)
			}
			var got []string
			for _, u := range ups {
				got = append(got, u.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("upstreams: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReadResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 10.96.0.10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadResolvConf(path)
	if err != nil || !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")}) {
		t.Errorf("ReadResolvConf: got %v, %v, want [10.96.0.10:53], nil", got, err)
	}
	if _, err := ReadResolvConf(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadResolvConf of a missing file: got %v, want os.ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte("search x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadResolvConf(path); !errors.Is(err, ErrNoNameservers) {
		t.Errorf("ReadResolvConf without nameservers: got %v, want ErrNoNameservers", err)
	}
}
