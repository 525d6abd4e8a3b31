package charts

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/yaml"
)

var all = []string{Base, IstiodLite, CNI, Ztunnel}

// TestLint is `helm lint --strict` of every chart: no warning, no error.
func TestLint(t *testing.T) {
	for _, name := range all {
		t.Run(name, func(t *testing.T) {
			dir, err := Dir(name)
			if err != nil {
				t.Fatal(err)
			}
			l := lint.AllWithKubeVersion(dir, nil, "istio-system", &chartutil.KubeVersion{Version: "v1.34.4", Major: "1", Minor: "34"})
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("%s", m)
				}
			}
		})
	}
}

// TestRender checks that every chart renders with its defaults and with the values the
// end-to-end tests use, into objects in the release namespace.
func TestRender(t *testing.T) {
	overrides := map[string]any{"image": map[string]any{"pullPolicy": "Never"}}
	for _, name := range all {
		for _, values := range []map[string]any{nil, overrides} {
			dir, err := Dir(name)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Render(dir, name, "istio-system", values)
			if err != nil {
				t.Fatalf("%s with %v: %v", name, values, err)
			}
			docs := strings.Split(out, "\n---\n")
			if len(docs) == 0 || strings.TrimSpace(out) == "" {
				t.Fatalf("%s rendered nothing", name)
			}
			for _, d := range docs {
				var obj struct {
					Kind     string `json:"kind"`
					Metadata struct {
						Name, Namespace string
					} `json:"metadata"`
				}
				if err := yaml.Unmarshal([]byte(d), &obj); err != nil {
					t.Fatalf("%s: rendered invalid YAML: %v\n%s", name, err, d)
				}
				cluster := strings.HasPrefix(obj.Kind, "Cluster") || obj.Kind == "CustomResourceDefinition"
				if obj.Kind != "" && !cluster && obj.Metadata.Namespace != "istio-system" {
					t.Errorf("%s: %s %s in namespace %q; want istio-system", name, obj.Kind, obj.Metadata.Name, obj.Metadata.Namespace)
				}
			}
			if values != nil && name != Base && !strings.Contains(out, "imagePullPolicy: Never") {
				t.Errorf("%s: image.pullPolicy=Never not rendered", name)
			}
		}
	}
}
