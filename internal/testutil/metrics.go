package testutil

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ScrapeMetrics has write, a Prometheus text exposition writer such as
// prom.Registry.WriteText, write a scrape, and returns its families as ParseMetrics does.
func ScrapeMetrics(t testing.TB, write func(io.Writer) error) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	if err := write(&b); err != nil {
		t.Fatalf("writing the metrics: %v", err)
	}
	return ParseMetrics(t, &b)
}

// ParseMetrics returns the families of the text exposition r by name, parsed the way
// Prometheus's own text parser reads them (names must be valid legacy names). It fails the
// test if the exposition does not parse or holds one label set twice in a family.
func ParseMetrics(t testing.TB, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	for name, mf := range mfs {
		seen := map[string]bool{}
		for _, m := range mf.GetMetric() {
			var pairs []string
			for _, lp := range m.GetLabel() {
				pairs = append(pairs, lp.GetName()+"\x00"+lp.GetValue())
			}
			slices.Sort(pairs)
			key := strings.Join(pairs, "\x01")
			if seen[key] {
				t.Errorf("metric family %s: label set %q written twice", name, pairs)
			}
			seen[key] = true
		}
	}
	return mfs
}
