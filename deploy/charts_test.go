package deploy

import (
	"io/fs"
	"path/filepath"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestLint is `helm lint --strict` of every chart embedded: no warning, no error.
func TestLint(t *testing.T) {
	charts, err := fs.ReadDir(Charts, ".")
	if err != nil {
		t.Fatal(err)
	}
	if len(charts) < 5 {
		t.Fatalf("%d charts embedded; want base, gateway-api, istiod-lite, cni and ztunnel", len(charts))
	}
	for _, c := range charts {
		t.Run(c.Name(), func(t *testing.T) {
			l := lint.AllWithKubeVersion(filepath.Join("charts", c.Name()), nil, "istio-system",
				&chartutil.KubeVersion{Version: "v1.34.4", Major: "1", Minor: "34"})
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("%s", m)
				}
			}
		})
	}
}
