package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/tests/images"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name           string
		args           []string
		wantBins       map[string]string
		wantEntrypoint []string
		wantVersion    string
		wantErr        string
	}{{
		name:           "default destination and entrypoint",
		args:           []string{"-o", "x.tar", "-ref", "ambit.local/echo:dev", "-bin", "out/echo", "-version", "v1"},
		wantBins:       map[string]string{"/usr/local/bin/echo": "out/echo"},
		wantEntrypoint: []string{"/usr/local/bin/echo"},
		wantVersion:    "v1",
	}, {
		name:           "explicit destination, two binaries",
		args:           []string{"-o", "x.tar", "-ref", "r:1", "-bin", "out/pause:/pause", "-bin", "out/sh:/bin/sh", "-entrypoint", "/pause -v"},
		wantBins:       map[string]string{"/pause": "out/pause", "/bin/sh": "out/sh"},
		wantEntrypoint: []string{"/pause", "-v"},
	}, {
		name:     "two binaries, no entrypoint",
		args:     []string{"-o", "x.tar", "-ref", "r:1", "-bin", "a:/a", "-bin", "b:/b"},
		wantBins: map[string]string{"/a": "a", "/b": "b"},
	}, {
		name:    "missing ref",
		args:    []string{"-o", "x.tar", "-bin", "a"},
		wantErr: "want -o, -ref",
	}, {
		name:    "bad label",
		args:    []string{"-o", "x.tar", "-ref", "r:1", "-bin", "a", "-label", "novalue"},
		wantErr: `label "novalue": want key=value`,
	}, {
		name:    "same destination twice",
		args:    []string{"-o", "x.tar", "-ref", "r:1", "-bin", "a:/a", "-bin", "b:/a"},
		wantErr: "/a given twice",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, _, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(spec.Binaries) != len(tt.wantBins) {
				t.Errorf("binaries = %v, want %v", spec.Binaries, tt.wantBins)
			}
			for dst, src := range tt.wantBins {
				if spec.Binaries[dst] != src {
					t.Errorf("binaries = %v, want %v", spec.Binaries, tt.wantBins)
				}
			}
			if !slices.Equal(spec.Entrypoint, tt.wantEntrypoint) {
				t.Errorf("entrypoint = %q, want %q", spec.Entrypoint, tt.wantEntrypoint)
			}
			if got := spec.Labels[images.VersionLabel]; got != tt.wantVersion {
				t.Errorf("version label = %q, want %q", got, tt.wantVersion)
			}
		})
	}
}

// TestParseFlagsDynamic adds the machine's own dynamically linked shell with the libraries
// ldd lists for it, and a configuration file.
func TestParseFlagsDynamic(t *testing.T) {
	spec, _, err := parseFlags([]string{"-o", "x.tar", "-ref", "r:1", "-dynbin", "/bin/sh:/bin/sh", "-file", "conf/app.conf:/etc/app.conf"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Binaries["/bin/sh"] != "/bin/sh" {
		t.Errorf("binaries = %v, want /bin/sh among them", spec.Binaries)
	}
	if len(spec.Binaries) < 2 {
		t.Errorf("binaries = %v, want /bin/sh and its shared libraries", spec.Binaries)
	}
	if spec.Files["/etc/app.conf"] != "conf/app.conf" {
		t.Errorf("files = %v, want /etc/app.conf from conf/app.conf", spec.Files)
	}
	if !slices.Equal(spec.Entrypoint, []string{"/bin/sh"}) {
		t.Errorf("entrypoint = %q, want the only binary given, /bin/sh", spec.Entrypoint)
	}
	_, _, err = parseFlags([]string{"-o", "x.tar", "-ref", "r:1", "-bin", "a", "-file", "nodst"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `file "nodst": want src:dst`) {
		t.Errorf("a -file without a destination: error = %v, want one naming it", err)
	}
}
