package images

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// WriteArchive builds every spec and writes them as one Docker image archive
// at path, each image tagged with its Ref. The file appears whole or not at
// all: it is written next to path and renamed.
func WriteArchive(path string, specs ...Spec) error {
	if len(specs) == 0 {
		return fmt.Errorf("writing image archive %s: no images given", path)
	}
	refs := make(map[name.Reference]v1.Image, len(specs))
	seen := map[string]bool{}
	for _, spec := range specs {
		tag, err := name.NewTag(spec.Ref)
		if err != nil {
			return fmt.Errorf("writing image archive %s: parsing ref: %w", path, err)
		}
		if seen[tag.String()] {
			return fmt.Errorf("writing image archive %s: ref %s given twice", path, tag)
		}
		seen[tag.String()] = true
		img, err := Build(spec)
		if err != nil {
			return fmt.Errorf("writing image archive %s: %w", path, err)
		}
		refs[tag] = img
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing image archive: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tarball.MultiRefWrite(refs, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("writing image archive %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing image archive %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("writing image archive %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing image archive: %w", err)
	}
	return nil
}
