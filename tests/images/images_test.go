package images

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// writeFile writes a stand-in binary and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriteArchive(t *testing.T) {
	echo := writeFile(t, "#!echo binary")
	pause := writeFile(t, "#!pause binary")
	specs := []Spec{{
		Ref:        "ambit.local/echo:dev",
		Binaries:   map[string]string{"/usr/local/bin/echo": echo},
		Entrypoint: []string{"/usr/local/bin/echo", "server"},
		Labels:     map[string]string{VersionLabel: "v1.2.3", "app": "echo"},
		Env:        []string{"VERSION=v1"},
	}, {
		Ref:        "ambit.local/pause:dev",
		Binaries:   map[string]string{"/pause": pause},
		Entrypoint: []string{"/pause"},
	}}
	archive := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteArchive(archive, specs...); err != nil {
		t.Fatalf("WriteArchive: %v", err)
	}
	tests := []struct {
		spec      Spec
		wantFiles map[string]string // name -> content; "" for a directory
	}{{
		spec: specs[0],
		wantFiles: map[string]string{
			"usr/": "", "usr/local/": "", "usr/local/bin/": "",
			"usr/local/bin/echo": "#!echo binary",
		},
	}, {
		spec:      specs[1],
		wantFiles: map[string]string{"pause": "#!pause binary"},
	}}
	for _, tt := range tests {
		t.Run(tt.spec.Ref, func(t *testing.T) {
			tag, err := name.NewTag(tt.spec.Ref)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(archive, &tag)
			if err != nil {
				t.Fatalf("ImageFromPath: %v", err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cf.Config.Entrypoint, tt.spec.Entrypoint) {
				t.Errorf("entrypoint = %q, want %q", cf.Config.Entrypoint, tt.spec.Entrypoint)
			}
			if !slices.Equal(cf.Config.Env, tt.spec.Env) {
				t.Errorf("env = %q, want %q", cf.Config.Env, tt.spec.Env)
			}
			if len(cf.Config.Labels) != len(tt.spec.Labels) || cf.Config.Labels[VersionLabel] != tt.spec.Labels[VersionLabel] {
				t.Errorf("labels = %v, want %v", cf.Config.Labels, tt.spec.Labels)
			}
			if cf.Created.Unix() != 0 {
				t.Errorf("created = %s, want the Unix epoch", cf.Created)
			}
			if cf.OS != "linux" || cf.Architecture == "" {
				t.Errorf("platform = %s/%s, want linux/<arch>", cf.OS, cf.Architecture)
			}
			want := map[string]string{"etc/": "", "tmp/": "",
				"etc/passwd": baseFiles["etc/passwd"], "etc/group": baseFiles["etc/group"]}
			for k, v := range tt.wantFiles {
				want[k] = v
			}
			checkLayer(t, img, want)
		})
	}
}

// checkLayer checks that img has one layer holding exactly want, with the
// modes and owners Build promises.
func checkLayer(t *testing.T, img v1.Image, want map[string]string) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading layer: %v", err)
		}
		got[hdr.Name] = true
		content, ok := want[hdr.Name]
		if !ok {
			t.Errorf("unexpected entry %s", hdr.Name)
			continue
		}
		wantMode := int64(0o755)
		switch {
		case hdr.Name == "tmp/":
			wantMode = 0o1777
		case strings.HasPrefix(hdr.Name, "etc/") && content != "":
			wantMode = 0o644
		}
		if hdr.Mode != wantMode || hdr.Uid != 0 || hdr.Gid != 0 || hdr.ModTime.Unix() != 0 {
			t.Errorf("%s: mode %o uid %d gid %d mtime %d, want mode %o, root, mtime 0", hdr.Name, hdr.Mode, hdr.Uid, hdr.Gid, hdr.ModTime.Unix(), wantMode)
		}
		if isDir := hdr.Typeflag == tar.TypeDir; isDir != (content == "") {
			t.Errorf("%s: type %c, want directory %v", hdr.Name, hdr.Typeflag, content == "")
		}
		data, _ := io.ReadAll(tr)
		if string(data) != content {
			t.Errorf("%s: content %q, want %q", hdr.Name, data, content)
		}
	}
	for name := range want {
		if !got[name] {
			t.Errorf("missing entry %s", name)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	bin := writeFile(t, "same bytes")
	spec := Spec{Ref: "ambit.local/a:dev", Binaries: map[string]string{"/a": bin, "/usr/bin/b": bin}, Entrypoint: []string{"/a"}}
	digest := func(s Spec) v1.Hash {
		t.Helper()
		img, err := Build(s)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	first := digest(spec)
	if again := digest(spec); again != first {
		t.Errorf("second build digest = %s, want %s", again, first)
	}
	changed := spec
	changed.Labels = map[string]string{VersionLabel: "v2"}
	if d := digest(changed); d == first {
		t.Errorf("digest with another label = %s, want it to differ", d)
	}
}

func TestBuildErrors(t *testing.T) {
	bin := writeFile(t, "x")
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no ref", Spec{Binaries: map[string]string{"/a": bin}}, "image has no ref"},
		{"relative path", Spec{Ref: "r:1", Binaries: map[string]string{"usr/bin/a": bin}}, `binary path "usr/bin/a": want a clean absolute`},
		{"unclean path", Spec{Ref: "r:1", Binaries: map[string]string{"/usr/../a": bin}}, `binary path "/usr/../a"`},
		{"clashes with base", Spec{Ref: "r:1", Binaries: map[string]string{"/etc/passwd": bin}}, "already in the image"},
		{"under a file", Spec{Ref: "r:1", Binaries: map[string]string{"/a": bin, "/a/b": bin}}, "/a is a file"},
		{"missing file", Spec{Ref: "r:1", Binaries: map[string]string{"/a": "/nonexistent/bin"}}, "reading binary for /a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	t.Run("duplicate ref", func(t *testing.T) {
		s := Spec{Ref: "ambit.local/a:dev", Binaries: map[string]string{"/a": bin}}
		err := WriteArchive(filepath.Join(t.TempDir(), "x.tar"), s, s)
		if err == nil || !strings.Contains(err.Error(), "given twice") {
			t.Errorf("WriteArchive error = %v, want ref given twice", err)
		}
	})
}
