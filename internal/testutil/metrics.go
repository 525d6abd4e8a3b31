package testutil

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ScrapeMetrics GETs /metrics from h, a Prometheus exposition handler, and returns its
// families by name, parsed the way Prometheus's own text parser reads them (names must be
// valid legacy names). It fails the test if the answer is not a 200, does not parse, or holds
// one label set twice in a family.
func ScrapeMetrics(t testing.TB, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, want 200: %s", rec.Code, rec.Body.Bytes())
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
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
