package redirect_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/cni/redirect/redirecttest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestPodRulesetGolden(t *testing.T) {
	got := redirect.RenderPodRuleset()
	path := filepath.Join("testdata", "nftables.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("ruleset differs from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestNFTablesContract(t *testing.T) {
	redirecttest.Run(t, func(t *testing.T) redirect.Backend {
		b, err := redirect.NewNFTables()
		if err != nil {
			t.Fatalf("NewNFTables: %v", err)
		}
		return b
	})
}
