package images

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"strings"
)

// ErrLibraryNotFound is wrapped by SharedLibraries' error when ldd cannot find a library a
// program needs on this machine.
var ErrLibraryNotFound = errors.New("shared library not found")

// SharedLibraries returns the shared libraries (the dynamic loader among them) that the
// programs or libraries at paths load, as ldd resolves them on this machine: each absolute
// path maps to itself, ready to merge into [Spec.Binaries], so that a program taken from a
// Debian package runs in an image with nothing else. A static program adds nothing. Libraries
// a program opens itself at run time (dlopen, nginx's load_module) are not listed: pass them
// in paths too.
func SharedLibraries(paths ...string) (map[string]string, error) {
	libs := map[string]string{}
	for _, p := range paths {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("ldd", p)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if strings.Contains(stdout.String()+stderr.String(), "not a dynamic executable") {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing the shared libraries of %s with ldd: %w: %s", p, err, strings.TrimSpace(stderr.String()))
		}
		found, err := parseLdd(stdout.Bytes())
		if err != nil {
			return nil, fmt.Errorf("shared libraries of %s: %w", p, err)
		}
		for _, lib := range found {
			libs[lib] = lib
		}
	}
	return libs, nil
}

// parseLdd returns the absolute library paths in ldd's output, whose lines are
// "name => /path (0x...)", "/path (0x...)" for the loader, or "name (0x...)" for the vDSO.
func parseLdd(out []byte) ([]string, error) {
	var libs []string
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || line == "statically linked" {
			continue
		}
		name, target, resolved := strings.Cut(line, "=>")
		if resolved {
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "not found") {
				return nil, fmt.Errorf("%s: %w on this machine; install the Debian package that provides it", strings.TrimSpace(name), ErrLibraryNotFound)
			}
		} else {
			target = line
		}
		p, _, _ := strings.Cut(target, " (")
		if !path.IsAbs(p) {
			continue // the vDSO, which the kernel provides
		}
		libs = append(libs, path.Clean(p))
	}
	return libs, s.Err()
}
