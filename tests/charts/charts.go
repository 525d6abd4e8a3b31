// Package charts renders Ambit's Helm charts (deploy/charts) with the Helm SDK, as `helm
// template` would, for the end-to-end tests; `ambitctl install` can later replace it.
package charts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// Names of the charts under deploy/charts, in install order.
const (
	Base       = "base"
	IstiodLite = "istiod-lite"
	CNI        = "cni"
	Ztunnel    = "ztunnel"
)

// Dir returns the directory of the chart name in the Ambit module that contains the working
// directory.
func Dir(name string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the charts: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "deploy", "charts", name), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the charts: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Render renders the chart in chartDir as release in namespace, with values over the chart's
// defaults, and returns its objects as one multi-document YAML in Helm's install order
// (namespaces and RBAC before workloads). Hooks and NOTES.txt are left out.
func Render(chartDir, release, namespace string, values map[string]any) (string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return "", fmt.Errorf("loading chart %s: %w", chartDir, err)
	}
	if err := chartutil.ProcessDependenciesWithMerge(ch, values); err != nil {
		return "", fmt.Errorf("chart %s: dependencies: %w", ch.Name(), err)
	}
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}
	vals, err := chartutil.ToRenderValues(ch, values, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return "", fmt.Errorf("chart %s: values: %w", ch.Name(), err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return "", fmt.Errorf("rendering chart %s: %w", ch.Name(), err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	_, manifests, err := releaseutil.SortManifests(files, chartutil.DefaultCapabilities.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("chart %s: parsing rendered manifests: %w", ch.Name(), err)
	}
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	return b.String(), nil
}
