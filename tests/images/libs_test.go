package images

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffd1b5e2000)
	libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f43c7db6000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f43c761e000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f43c809c000)
`
	got, err := parseLdd([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	_, err = parseLdd([]byte("\tlibgone.so.1 => not found\n"))
	if !errors.Is(err, ErrLibraryNotFound) {
		t.Errorf("a missing library: got %v, want ErrLibraryNotFound", err)
	}
}

// TestSharedLibraries lists the libraries of the machine's own dynamically linked shell
// and puts them in an image next to it.
func TestSharedLibraries(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh on this machine: %v", err)
	}
	libs, err := SharedLibraries(sh)
	if err != nil {
		t.Fatal(err)
	}
	var loader bool
	for dst, src := range libs {
		if dst != src || !filepath.IsAbs(dst) {
			t.Errorf("library %s -> %s; want the same absolute path", dst, src)
		}
		if m, _ := filepath.Match("/lib*/ld-linux*.so.*", dst); m {
			loader = true
		}
	}
	if !loader {
		t.Errorf("libraries of %s: %v; want the dynamic loader among them", sh, libs)
	}
	conf := writeFile(t, "setting on\n")
	libs["/bin/sh"] = sh
	img, err := Build(Spec{Ref: "r:1", Binaries: libs, Files: map[string]string{"/etc/app/app.conf": conf}})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(mutate.Extract(img))
	modes := map[string]int64{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		modes["/"+hdr.Name] = hdr.Mode
	}
	for dst := range libs {
		if modes[dst] != 0o755 {
			t.Errorf("%s: mode %o in the image; want 0755", dst, modes[dst])
		}
	}
	if modes["/etc/app/app.conf"] != 0o644 {
		t.Errorf("/etc/app/app.conf: mode %o in the image; want 0644", modes["/etc/app/app.conf"])
	}

	// A static program needs nothing.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SharedLibraries(self); err != nil {
		t.Errorf("SharedLibraries of the test binary: %v", err)
	}
}
