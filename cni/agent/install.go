package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/cni/plugin"
)

// installBinary copies the plugin binary src to binDir, replacing it atomically.
func installBinary(src, binDir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("installing CNI plugin: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(binDir, "."+plugin.Type+"-*")
	if err != nil {
		return fmt.Errorf("installing CNI plugin: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("installing CNI plugin: copying: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("installing CNI plugin: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("installing CNI plugin: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(binDir, plugin.Type)); err != nil {
		return fmt.Errorf("installing CNI plugin: %w", err)
	}
	return nil
}

// primaryConflist returns the conflist the runtime uses: the first *.conflist in confDir by
// name (containerd and CRI-O load the first one).
func primaryConflist(confDir string) (string, error) {
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return "", fmt.Errorf("reading CNI config dir: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conflist") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no .conflist in %s yet (the primary CNI plugin writes it): %w", confDir, fs.ErrNotExist)
	}
	slices.Sort(names)
	return filepath.Join(confDir, names[0]), nil
}

// installConflistEntry makes the plugin the last entry of the primary conflist, replacing an
// earlier ambit-cni entry; it rewrites the file (atomically) only if something changed and
// reports whether it did.
func installConflistEntry(confDir string, entry map[string]any) (string, bool, error) {
	path, err := primaryConflist(confDir)
	if err != nil {
		return "", false, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return path, false, fmt.Errorf("reading %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var conf map[string]any
	if err := dec.Decode(&conf); err != nil {
		return path, false, fmt.Errorf("parsing %s: %w", path, err)
	}
	plugins, ok := conf["plugins"].([]any)
	if !ok {
		return path, false, fmt.Errorf("parsing %s: no plugins list", path)
	}
	var kept []any
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == plugin.Type {
			continue
		}
		kept = append(kept, p)
	}
	// Round-trip entry through JSON so it compares equal to what a decode yields.
	var want map[string]any
	eb, _ := json.Marshal(entry)
	d2 := json.NewDecoder(bytes.NewReader(eb))
	d2.UseNumber()
	if err := d2.Decode(&want); err != nil {
		return path, false, fmt.Errorf("encoding the plugin entry: %w", err)
	}
	kept = append(kept, want)
	if reflect.DeepEqual(kept, plugins) {
		return path, false, nil
	}
	conf["plugins"] = kept
	if err := writeConflist(path, conf); err != nil {
		return path, false, err
	}
	return path, true, nil
}

// writeConflist replaces the conflist at path atomically.
func writeConflist(path string, conf map[string]any) error {
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	tmp := path + ".ambit.tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(fmt.Errorf("replacing %s: %w", path, err), os.Remove(tmp))
	}
	return nil
}

// removeConflistEntry takes the plugin out of the primary conflist; it returns the file it
// rewrote, or "" when there was nothing to remove.
func removeConflistEntry(confDir string) (string, error) {
	path, err := primaryConflist(confDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var conf map[string]any
	if err := dec.Decode(&conf); err != nil {
		return "", fmt.Errorf("parsing %s: %w", path, err)
	}
	plugins, _ := conf["plugins"].([]any)
	var kept []any
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == plugin.Type {
			continue
		}
		kept = append(kept, p)
	}
	if len(kept) == len(plugins) {
		return "", nil
	}
	conf["plugins"] = kept
	return path, writeConflist(path, conf)
}
