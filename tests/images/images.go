// Package images builds OCI/Docker images from static binaries without a
// container engine, and writes them as one archive that
// "ctr -n k8s.io images import" loads. The test cluster uses it to put the
// echo, pause and Ambit binaries on its nodes without a registry.
package images

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// VersionLabel is the OCI label that carries the version of an image.
const VersionLabel = "org.opencontainers.image.version"

// Spec describes one image.
type Spec struct {
	// Ref names the image in the archive, e.g. "ambit.local/echo:dev".
	Ref string
	// Binaries maps an absolute path in the image to a file on disk.
	Binaries map[string]string
	// Files maps an absolute path in the image to a file on disk that is not a program
	// (configuration, data); it gets mode 0644.
	Files map[string]string
	// Entrypoint of the image, e.g. {"/usr/local/bin/echo"}.
	Entrypoint []string
	// Labels of the image config; set VersionLabel to version the image.
	Labels map[string]string
	// Env of the image config, as NAME=value.
	Env []string
	// Arch is the GOARCH the binaries are for; defaults to runtime.GOARCH.
	Arch string
}

// ErrNoRef is returned for a [Spec] without a Ref.
var ErrNoRef = errors.New("image has no ref")

// Build returns the single-layer image that spec describes. The layer holds
// the binaries (mode 0755, owned by root), the files (mode 0644), /etc/passwd,
// /etc/group and /tmp;
// every time stamp is fixed, so the same files give the same digest.
func Build(spec Spec) (v1.Image, error) {
	if spec.Ref == "" {
		return nil, fmt.Errorf("building image with binaries %v: %w", slices.Sorted(maps.Keys(spec.Binaries)), ErrNoRef)
	}
	layer, err := newLayer(spec.Binaries, spec.Files)
	if err != nil {
		return nil, fmt.Errorf("building image %s: %w", spec.Ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("building image %s: adding layer: %w", spec.Ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("building image %s: reading config: %w", spec.Ref, err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = spec.Arch
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Config.Entrypoint = slices.Clone(spec.Entrypoint)
	cf.Config.Env = slices.Clone(spec.Env)
	cf.Config.Labels = maps.Clone(spec.Labels)
	cf.Config.WorkingDir = "/"
	// The zero time would say year 1; the epoch is what reproducible
	// builds (SOURCE_DATE_EPOCH=0) use.
	cf.Created = v1.Time{Time: modTime}
	for i := range cf.History {
		cf.History[i].Created = cf.Created
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("building image %s: setting config: %w", spec.Ref, err)
	}
	return img, nil
}
