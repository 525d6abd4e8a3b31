package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// modTime is the time stamp of every file, fixed for reproducible digests.
var modTime = time.Unix(0, 0).UTC()

// baseFiles are the files every image gets so that programs that look up
// users or write to /tmp work.
var baseFiles = map[string]string{
	"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
	"etc/group":  "root:x:0:\nnobody:x:65534:\n",
}

// entry is one file or directory of the layer.
type entry struct {
	mode int64
	data []byte // nil for a directory
}

// newLayer returns a layer holding the binaries and files (image path -> disk
// path) and the base files, in sorted order.
func newLayer(binaries, files map[string]string) (v1.Layer, error) {
	entries := map[string]entry{
		"etc": {mode: 0o755},
		"tmp": {mode: 0o1777},
	}
	for name, content := range baseFiles {
		entries[name] = entry{mode: 0o644, data: []byte(content)}
	}
	if err := addFiles(entries, binaries, "binary", 0o755); err != nil {
		return nil, err
	}
	if err := addFiles(entries, files, "file", 0o644); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if err := writeEntry(tw, name, entries[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing layer: %w", err)
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("creating layer: %w", err)
	}
	return layer, nil
}

// addFiles adds files (image path -> disk path) of a kind ("binary", "file") with mode, and
// the directories above them, to entries.
func addFiles(entries map[string]entry, files map[string]string, kind string, mode int64) error {
	for _, dst := range slices.Sorted(maps.Keys(files)) {
		name, err := imagePath(dst)
		if err != nil {
			return err
		}
		if _, ok := entries[name]; ok {
			return fmt.Errorf("%s path %q: already in the image", kind, dst)
		}
		data, err := os.ReadFile(files[dst])
		if err != nil {
			return fmt.Errorf("reading %s for %s: %w", kind, dst, err)
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if e, ok := entries[dir]; ok && e.data != nil {
				return fmt.Errorf("%s path %q: /%s is a file", kind, dst, dir)
			}
			if _, ok := entries[dir]; !ok {
				entries[dir] = entry{mode: 0o755}
			}
		}
		entries[name] = entry{mode: mode, data: data}
	}
	return nil
}

// imagePath checks that p is a clean absolute path and returns it without
// the leading slash, as tar entries are named.
func imagePath(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", fmt.Errorf("binary path %q: want a clean absolute file path such as /usr/local/bin/app", p)
	}
	return strings.TrimPrefix(p, "/"), nil
}

func writeEntry(tw *tar.Writer, name string, e entry) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    e.mode,
		ModTime: modTime,
		Uname:   "root",
		Gname:   "root",
		Format:  tar.FormatPAX,
	}
	if e.data == nil {
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	} else {
		hdr.Typeflag = tar.TypeReg
		hdr.Size = int64(len(e.data))
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing layer entry %s: %w", name, err)
	}
	if _, err := tw.Write(e.data); err != nil {
		return fmt.Errorf("writing layer entry %s: %w", name, err)
	}
	return nil
}
