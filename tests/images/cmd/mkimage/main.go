// Command mkimage writes a Docker image archive holding one image made of
// static binaries, without a container engine:
//
//	mkimage -o echo.tar -ref ambit.local/echo:dev -bin ./echo
//	ctr -n k8s.io images import echo.tar
//
// A -bin given as src:dst puts src at dst in the image; a bare src goes to
// /usr/local/bin/<name>. A -dynbin is a dynamically linked program (or
// library) from this machine: it goes in the same way, with every shared
// library ldd lists for it at that library's own path. A -file src:dst adds a
// configuration or data file (mode 0644). Without -entrypoint, an image with
// one binary runs it.
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
	spec := images.Spec{Binaries: map[string]string{}, Files: map[string]string{}, Labels: map[string]string{}}
	var out, entrypoint, version string
	var dynamic []string // sources of -dynbin
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&out, "o", "", "output `archive` (.tar)")
	fs.StringVar(&spec.Ref, "ref", "", "image `ref`, e.g. ambit.local/echo:dev")
	fs.StringVar(&spec.Arch, "arch", "", "GOARCH of the binaries (default this machine's)")
	addBin := func(s string) (string, error) {
		src, dst, ok := strings.Cut(s, ":")
		if !ok {
			dst = path.Join("/usr/local/bin", filepath.Base(src))
		}
		if _, dup := spec.Binaries[dst]; dup {
			return "", fmt.Errorf("%s given twice", dst)
		}
		spec.Binaries[dst] = src
		return src, nil
	}
	fs.Func("bin", "binary `src[:dst]` to add; dst defaults to /usr/local/bin/<name> (repeatable)", func(s string) error {
		_, err := addBin(s)
		return err
	})
	fs.Func("dynbin", "dynamically linked binary or library `src[:dst]` to add with the shared libraries ldd lists for it (repeatable)", func(s string) error {
		src, err := addBin(s)
		dynamic = append(dynamic, src)
		return err
	})
	fs.Func("file", "configuration or data file `src:dst` to add, mode 0644 (repeatable)", func(s string) error {
		src, dst, ok := strings.Cut(s, ":")
		if !ok || src == "" || dst == "" {
			return fmt.Errorf("file %q: want src:dst", s)
		}
		if _, dup := spec.Files[dst]; dup {
			return fmt.Errorf("%s given twice", dst)
		}
		spec.Files[dst] = src
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
	if len(dynamic) > 0 {
		libs, err := images.SharedLibraries(dynamic...)
		if err != nil {
			fmt.Fprintf(output, "mkimage: %v\n", err)
			return spec, "", err
		}
		for dst, src := range libs {
			if _, given := spec.Binaries[dst]; !given {
				spec.Binaries[dst] = src
			}
		}
	}
	return spec, out, nil
}
