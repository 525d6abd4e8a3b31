// Command mkimage writes a Docker image archive holding one image made of
// static binaries, without a container engine:
//
//	mkimage -o echo.tar -ref ambit.local/echo:dev -bin ./echo
//	ctr -n k8s.io images import echo.tar
//
// A -bin given as src:dst puts src at dst in the image; a bare src goes to
// /usr/local/bin/<name>. Without -entrypoint, an image with one binary runs
// it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ambit-mesh/ambit/tests/images"
)

func main() {
	spec, out, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2) // parseFlags has printed why
	}
	if err := images.WriteArchive(out, spec); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

// parseFlags binds the flags to a spec and the output path, printing usage
// and errors to output.
func parseFlags(args []string, output io.Writer) (images.Spec, string, error) {
	spec := images.Spec{Binaries: map[string]string{}, Labels: map[string]string{}}
	var out, entrypoint, version string
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&out, "o", "", "output `archive` (.tar)")
	fs.StringVar(&spec.Ref, "ref", "", "image `ref`, e.g. ambit.local/echo:dev")
	fs.StringVar(&spec.Arch, "arch", "", "GOARCH of the binaries (default this machine's)")
	fs.Func("bin", "binary `src[:dst]` to add; dst defaults to /usr/local/bin/<name> (repeatable)", func(s string) error {
		src, dst, ok := strings.Cut(s, ":")
		if !ok {
			dst = path.Join("/usr/local/bin", filepath.Base(src))
		}
		if _, dup := spec.Binaries[dst]; dup {
			return fmt.Errorf("%s given twice", dst)
		}
		spec.Binaries[dst] = src
		return nil
	})
	fs.StringVar(&entrypoint, "entrypoint", "", "entrypoint, split on spaces (default: the only binary)")
	fs.Func("label", "image label `k=v` (repeatable)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want key=value", s)
		}
		spec.Labels[k] = v
		return nil
	})
	fs.Func("env", "environment `NAME=value` (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("env %q: want NAME=value", s)
		}
		spec.Env = append(spec.Env, s)
		return nil
	})
	fs.StringVar(&version, "version", "", "sets the label "+images.VersionLabel)
	if err := fs.Parse(args); err != nil {
		return spec, "", err
	}
	if out == "" || spec.Ref == "" || len(spec.Binaries) == 0 || fs.NArg() > 0 {
		err := errors.New("want -o, -ref, at least one -bin and no other arguments")
		fmt.Fprintf(output, "mkimage: %v\n", err)
		fs.Usage()
		return spec, "", err
	}
	if version != "" {
		spec.Labels[images.VersionLabel] = version
	}
	spec.Entrypoint = strings.Fields(entrypoint)
	if len(spec.Entrypoint) == 0 && len(spec.Binaries) == 1 {
		for dst := range spec.Binaries {
			spec.Entrypoint = []string{dst}
		}
	}
	return spec, out, nil
}
