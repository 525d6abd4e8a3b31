package prom

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

func text(t *testing.T, r *Registry) string {
	t.Helper()
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The exact bytes: families sorted by name, labels by name, series by label values, HELP and
// label values escaped, numbers as Prometheus writes them.
func TestWriteText(t *testing.T) {
	r := NewRegistry()
	reqs := NewCounterVec("b_requests_total", "Requests, by\\path\nand code.", []string{"path", "code"})
	lat := NewHistogramVec("a_latency_seconds", `Latency of a "request".`, []string{"path"}, []float64{0.1, 1})
	r.Register(reqs, lat, NewCounterVec("c_empty_total", "No series yet.", []string{"x"}))
	reqs.With("/b", "200").Add(1500000)
	reqs.With(`/a"q\`+"\n", "500").Inc()
	reqs.With("/a", "200").Inc()
	lat.With("/a").Observe(0.1)
	lat.With("/a").Observe(3)
	want := `# HELP a_latency_seconds Latency of a "request".
# TYPE a_latency_seconds histogram
a_latency_seconds_bucket{path="/a",le="0.1"} 1
a_latency_seconds_bucket{path="/a",le="1"} 1
a_latency_seconds_bucket{path="/a",le="+Inf"} 2
a_latency_seconds_sum{path="/a"} 3.1
a_latency_seconds_count{path="/a"} 2
# HELP b_requests_total Requests, by\\path\nand code.
# TYPE b_requests_total counter
b_requests_total{code="200",path="/a"} 1
b_requests_total{code="200",path="/b"} 1.5e+06
b_requests_total{code="500",path="/a\"q\\\n"} 1
# HELP c_empty_total No series yet.
# TYPE c_empty_total counter
`
	if got := text(t, r); got != want {
		t.Errorf("exposition:\n%s\nwant:\n%s", got, want)
	}
}

// Label values with every escaped character come back from Prometheus's text parser as they
// went in.
func TestLabelEscapingRoundTrips(t *testing.T) {
	values := []string{`back\slash`, `quo"te`, "line\nfeed", `\"` + "\n\\n", "", "ünïcode ✓", "spiffe://td/ns/a/sa/b", `}{,=`}
	r := NewRegistry()
	v := NewCounterVec("x_total", "help", []string{"v", "i"})
	r.Register(v)
	for i, val := range values {
		v.With(val, string(rune('a'+i))).Add(uint64(i + 1))
	}
	mfs := testutil.ScrapeMetrics(t, r.WriteText)
	got := map[string]float64{}
	for _, m := range mfs["x_total"].GetMetric() {
		got[label(m, "v")] = m.GetCounter().GetValue()
	}
	for i, val := range values {
		if got[val] != float64(i+1) {
			t.Errorf("value %q: got %v, want %d (parsed: %v)", val, got[val], i+1, got)
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

func TestHistogram(t *testing.T) {
	buckets := []float64{0.001, 0.005, 0.01, 0.1, 1, 5}
	r := NewRegistry()
	h := NewHistogramVec("d_seconds", "help", []string{"q"}, buckets)
	r.Register(h)
	samples := []float64{0, 0.001, 0.0011, 0.005, 0.05, 1, 4.9, 5, 5.0001, 60}
	for _, s := range samples {
		h.With("a").Observe(s)
	}
	h.With("b") // a series with no samples
	mfs := testutil.ScrapeMetrics(t, r.WriteText)
	mf := mfs["d_seconds"]
	if mf.GetType() != dto.MetricType_HISTOGRAM || len(mf.GetMetric()) != 2 {
		t.Fatalf("d_seconds: got type %v with %d series, want a histogram with 2", mf.GetType(), len(mf.GetMetric()))
	}
	tests := []struct {
		series string
		want   []uint64 // cumulative, per bucket
		count  uint64
		sum    float64
	}{
		{series: "a", want: []uint64{2, 4, 4, 5, 6, 8, 10}, count: 10, sum: 75.9572},
		{series: "b", want: []uint64{0, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		var hist *dto.Histogram
		for _, m := range mf.GetMetric() {
			if label(m, "q") == tt.series {
				hist = m.GetHistogram()
			}
		}
		if hist.GetSampleCount() != tt.count || math.Abs(hist.GetSampleSum()-tt.sum) > 1e-9 {
			t.Errorf("series %s: count %d sum %v, want %d and %v", tt.series, hist.GetSampleCount(), hist.GetSampleSum(), tt.count, tt.sum)
		}
		les := append(slices.Clone(buckets), math.Inf(1))
		if len(hist.GetBucket()) != len(les) {
			t.Fatalf("series %s: %d buckets, want %d", tt.series, len(hist.GetBucket()), len(les))
		}
		for i, b := range hist.GetBucket() {
			if b.GetUpperBound() != les[i] || b.GetCumulativeCount() != tt.want[i] {
				t.Errorf("series %s bucket %d: le=%v count %d, want le=%v count %d", tt.series, i, b.GetUpperBound(), b.GetCumulativeCount(), les[i], tt.want[i])
			}
		}
	}
}

func TestConcurrentUpdates(t *testing.T) {
	r := NewRegistry()
	c := NewCounterVec("c_total", "help", []string{"k"})
	h := NewHistogramVec("h_seconds", "help", []string{"k"}, []float64{1})
	r.Register(c, h)
	const workers, n = 4, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range n {
				c.With("k", string(rune('a'+i%3))).Inc() // extra value ignored
				h.With(string(rune('a' + w))).Observe(0.5)
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			text(t, r)
		}
	})
	wg.Wait()
	mfs := testutil.ScrapeMetrics(t, r.WriteText)
	var total float64
	for _, m := range mfs["c_total"].GetMetric() {
		total += m.GetCounter().GetValue()
	}
	if total != workers*n || len(mfs["c_total"].GetMetric()) != 1 {
		t.Errorf("c_total: got %v in %d series, want %d in 1", total, len(mfs["c_total"].GetMetric()), workers*n)
	}
	for _, m := range mfs["h_seconds"].GetMetric() {
		if got := m.GetHistogram(); got.GetSampleCount() != n || got.GetSampleSum() != n*0.5 {
			t.Errorf("h_seconds{%s}: count %d sum %v, want %d and %v", label(m, "k"), got.GetSampleCount(), got.GetSampleSum(), n, n*0.5)
		}
	}
}

// Only registered collectors are written, and the writer's error comes back.
func TestWriteTextRegisteredOnly(t *testing.T) {
	r := NewRegistry()
	NewCounterVec("x_total", "help", nil).With().Inc() // not registered: not written
	r.Register(NewCounterVec("y_total", "help", nil))
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "# HELP y_total help\n# TYPE y_total counter\n"; got != want {
		t.Errorf("body: got %q, want %q", got, want)
	}
	if err := r.WriteText(failingWriter{}); !errors.Is(err, errWrite) {
		t.Errorf("WriteText to a failing writer: got %v, want its error", err)
	}
}

var errWrite = errors.New("disk full")

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errWrite }

// The Go and process families keep client_golang's names and types, and read sane values.
func TestGoAndProcessCollectors(t *testing.T) {
	r := NewRegistry()
	r.Register(NewGoCollector(), NewProcessCollector())
	mfs := testutil.ScrapeMetrics(t, r.WriteText)
	want := map[string]dto.MetricType{
		"go_gc_duration_seconds": dto.MetricType_SUMMARY, "go_goroutines": dto.MetricType_GAUGE,
		"go_threads": dto.MetricType_GAUGE, "go_info": dto.MetricType_GAUGE,
		"go_memstats_heap_alloc_bytes": dto.MetricType_GAUGE, "go_memstats_heap_inuse_bytes": dto.MetricType_GAUGE,
		"go_memstats_sys_bytes": dto.MetricType_GAUGE, "go_memstats_alloc_bytes_total": dto.MetricType_COUNTER,
		"go_memstats_mallocs_total": dto.MetricType_COUNTER, "go_memstats_next_gc_bytes": dto.MetricType_GAUGE,
		"go_memstats_last_gc_time_seconds": dto.MetricType_GAUGE, "go_sched_gomaxprocs_threads": dto.MetricType_GAUGE,
		"go_gc_gogc_percent": dto.MetricType_GAUGE, "go_gc_gomemlimit_bytes": dto.MetricType_GAUGE,
		"process_cpu_seconds_total": dto.MetricType_COUNTER, "process_resident_memory_bytes": dto.MetricType_GAUGE,
		"process_virtual_memory_bytes": dto.MetricType_GAUGE, "process_virtual_memory_max_bytes": dto.MetricType_GAUGE,
		"process_open_fds": dto.MetricType_GAUGE, "process_max_fds": dto.MetricType_GAUGE,
		"process_start_time_seconds": dto.MetricType_GAUGE, "process_network_receive_bytes_total": dto.MetricType_COUNTER,
		"process_network_transmit_bytes_total": dto.MetricType_COUNTER,
	}
	for name, typ := range want {
		if mf, ok := mfs[name]; !ok || mf.GetType() != typ {
			t.Errorf("%s: got %v (present %v), want %v", name, mf.GetType(), ok, typ)
		}
	}
	if n := len(mfs["go_gc_duration_seconds"].GetMetric()[0].GetSummary().GetQuantile()); n != 5 {
		t.Errorf("go_gc_duration_seconds: %d quantiles, want 5", n)
	}
	val := func(name string) float64 {
		m := mfs[name].GetMetric()[0]
		return m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	now := float64(time.Now().Unix())
	sane := []struct {
		name     string
		min, max float64
	}{
		{"go_goroutines", 1, 1e6},
		{"go_threads", 1, 1e5},
		{"go_memstats_heap_alloc_bytes", 1, 1 << 40},
		{"go_memstats_sys_bytes", 1 << 20, 1 << 40},
		{"go_sched_gomaxprocs_threads", 1, 1 << 16},
		{"process_resident_memory_bytes", 1 << 20, 1 << 40},
		{"process_virtual_memory_bytes", 1 << 20, math.MaxUint64},
		{"process_open_fds", 3, 1 << 30},
		{"process_max_fds", 3, math.MaxUint64},
		{"process_start_time_seconds", now - 24*3600, now + 1},
	}
	for _, s := range sane {
		if v := val(s.name); v < s.min || v > s.max {
			t.Errorf("%s: got %v, want within [%v, %v]", s.name, v, s.min, s.max)
		}
	}
	if got := label(mfs["go_info"].GetMetric()[0], "version"); !strings.HasPrefix(got, "go") {
		t.Errorf("go_info version: got %q", got)
	}
}

func TestReadStat(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, stat string
		want       procStat
		wantErr    bool
	}{
		{name: "plain", stat: "42 (ztunnel) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 1675583488 2146 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
			want: procStat{utime: 250, stime: 50, starttime: 12345, vsize: 1675583488, rss: 2146}},
		{name: "command with spaces and parentheses", stat: "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 8 0 0 20 0 9 0 9 10 11 0\n",
			want: procStat{utime: 7, stime: 8, starttime: 9, vsize: 10, rss: 11}},
		{name: "truncated", stat: "42 (ztunnel) S 1 42", wantErr: true},
		{name: "no command", stat: "42 ztunnel S 1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, "stat")
			if err := os.WriteFile(p, []byte(tt.stat), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readStat(p)
			if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
				t.Errorf("readStat: got %+v, %v; want %+v (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestReadLimitsAndNetDev(t *testing.T) {
	dir := t.TempDir()
	limits := `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            20000                1048576              files     
Max address space         unlimited            unlimited            bytes     
`
	netdev := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 100 1    0    0    0     0          0         0 200 1    0    0    0     0       0          0
  eth0: 1000 10    0    0    0     0          0         0 3000 9    0    0    0     0       0          0
`
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "limits"), []byte(limits), 0o600))
	must(os.WriteFile(filepath.Join(dir, "netdev"), []byte(netdev), 0o600))
	fds, as, err := readLimits(filepath.Join(dir, "limits"))
	if err != nil || fds != 20000 || as != math.MaxUint64 {
		t.Errorf("readLimits: got %v, %v, %v; want 20000, MaxUint64, nil", fds, as, err)
	}
	rx, tx, err := readNetDev(filepath.Join(dir, "netdev"))
	if err != nil || rx != 1100 || tx != 3200 {
		t.Errorf("readNetDev: got %v, %v, %v; want 1100, 3200, nil", rx, tx, err)
	}
}

func BenchmarkCounterVecWith(b *testing.B) {
	v := NewCounterVec("x_total", "help", []string{"a", "b", "c", "d"})
	v.With("aaaa", "udp", "productpage", "v1")
	b.ReportAllocs()
	for b.Loop() {
		v.With("aaaa", "udp", "productpage", "v1").Inc()
	}
}

func BenchmarkHistogramObserve(b *testing.B) {
	h := NewHistogramVec("x_seconds", "help", nil, []float64{0.001, 0.005, 0.01, 0.1, 1, 5}).With()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(0.003)
		}
	})
}
