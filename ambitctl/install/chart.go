package install

import (
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"

	"github.com/ambit-mesh/ambit/deploy"
)

// loadChart loads the chart of component from the charts embedded in the binary.
func loadChart(component string) (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(deploy.Charts, component, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(deploy.Charts, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, component+"/"), Data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading chart %s: %w", component, err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("loading chart %s: %w", component, err)
	}
	return ch, nil
}

// checkValues refuses values the component's chart does not have, naming the ones it has. A
// key under a value whose default is an empty map (nodeSelector: {}) is free-form.
func checkValues(component string, vals map[string]any) error {
	ch, err := loadChart(component)
	if err != nil {
		return err
	}
	return checkKeys(component, "", vals, ch.Values)
}

func checkKeys(component, prefix string, vals, defaults map[string]any) error {
	for _, k := range slices.Sorted(maps.Keys(vals)) {
		d, ok := defaults[k]
		if !ok {
			valid := leafKeys("", defaults)
			if len(valid) == 0 {
				return fmt.Errorf("--set values.%s.%s%s: the %s chart has no values", component, prefix, k, component)
			}
			return fmt.Errorf("--set values.%s.%s%s: the %s chart has no such value; its values are %s",
				component, prefix, k, component, strings.Join(prefixed(component, prefix, valid), ", "))
		}
		sub, isMap := vals[k].(map[string]any)
		dm, defIsMap := d.(map[string]any)
		if isMap && defIsMap && len(dm) > 0 {
			if err := checkKeys(component, prefix+k+".", sub, dm); err != nil {
				return err
			}
		}
	}
	return nil
}

// leafKeys lists the dotted keys of m's leaves (an empty map counts as a leaf).
func leafKeys(prefix string, m map[string]any) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if sub, ok := m[k].(map[string]any); ok && len(sub) > 0 {
			out = append(out, leafKeys(prefix+k+".", sub)...)
			continue
		}
		out = append(out, prefix+k)
	}
	return out
}

func prefixed(component, prefix string, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = "values." + component + "." + prefix + k
	}
	return out
}

// Manifest is one component's rendered objects.
type Manifest struct {
	Component string
	// Docs are the objects as YAML documents, in Helm's install order (namespaces, RBAC,
	// then workloads), each starting with a "# Source:" comment.
	Docs []string
}

// YAML joins the documents into one multi-document YAML.
func (m Manifest) YAML() string {
	var b strings.Builder
	for _, d := range m.Docs {
		b.WriteString("---\n")
		b.WriteString(d)
		b.WriteString("\n")
	}
	return b.String()
}

// RenderComponent renders component's chart with values over its defaults, as `helm template` would
// for a release named after the component in Namespace. Hooks and NOTES.txt are left out.
func RenderComponent(component string, values map[string]any) (Manifest, error) {
	ch, err := loadChart(component)
	if err != nil {
		return Manifest{}, err
	}
	opts := chartutil.ReleaseOptions{Name: component, Namespace: Namespace, Revision: 1, IsInstall: true}
	vals, err := chartutil.ToRenderValues(ch, values, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return Manifest{}, fmt.Errorf("chart %s: values: %w", component, err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return Manifest{}, fmt.Errorf("rendering chart %s: %w", component, err)
	}
	for name := range files {
		if path.Base(name) == "NOTES.txt" {
			delete(files, name)
		}
	}
	_, manifests, err := releaseutil.SortManifests(files, chartutil.DefaultCapabilities.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return Manifest{}, fmt.Errorf("chart %s: parsing rendered manifests: %w", component, err)
	}
	m := Manifest{Component: component}
	for _, rm := range manifests {
		if body := strings.TrimSpace(rm.Content); body != "" {
			m.Docs = append(m.Docs, "# Source: "+rm.Name+"\n"+body)
		}
	}
	return m, nil
}

// Render renders every component s enables, in install order, for `manifest generate`.
func Render(s Settings) ([]Manifest, error) {
	var out []Manifest
	for _, c := range s.Components() {
		m, err := RenderComponent(c, s.chartValues(c))
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
