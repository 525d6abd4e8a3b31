package metrics

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// The # HELP and # TYPE lines of Istio's families are what dashboards and alerts know ztunnel
// by: testdata/families.golden pins them (written by client_golang before internal/prom
// replaced it, and unchanged since).
func TestFamilies(t *testing.T) {
	m := New()
	var scrape bytes.Buffer
	if err := m.WriteText(&scrape); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	sc := bufio.NewScanner(&scrape)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "# HELP istio_") || strings.HasPrefix(sc.Text(), "# TYPE istio_") {
			got.WriteString(sc.Text() + "\n")
		}
	}
	const golden = "testdata/families.golden"
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("families:\n%s\nwant (%s; -update rewrites it):\n%s", got.Bytes(), golden, want)
	}
}

// Label values come from workload names and identities; escaped characters in them reach a
// scraper unchanged.
func TestLabelValuesRoundTrip(t *testing.T) {
	m := New()
	l := fullLabels
	l.SourceWorkload = `back\slash "quoted"` + "\nnext line"
	l.DestinationPrincipal = `spiffe://cluster.local/ns/a/sa/b\"`
	m.Open(l).Close()
	want := map[string]string{"source_workload": l.SourceWorkload, "destination_principal": l.DestinationPrincipal}
	if got, ok := value(t, m, "istio_tcp_connections_opened_total", want); !ok || got != 1 {
		t.Errorf("opened%v: got %v (found %v), want 1", want, got, ok)
	}
}

// istio_dns_upstream_request_duration_seconds keeps its buckets, cumulative with +Inf.
func TestDNSHistogram(t *testing.T) {
	m := New()
	pod := m.DNS("productpage", "v1")
	for _, took := range []time.Duration{500 * time.Microsecond, time.Millisecond, 7 * time.Millisecond, 2 * time.Second, 10 * time.Second} {
		pod.ObserveUpstream("a", "udp", took, nil)
	}
	pod.ObserveUpstream("a", "udp", time.Second, errors.New("timeout"))
	h := find(t, m, "istio_dns_upstream_request_duration_seconds", map[string]string{"request_query_type": "a"}).GetHistogram()
	les := append(slices.Clone(dnsBuckets), math.Inf(1))
	want := []uint64{2, 2, 3, 3, 4, 5, 6}
	if len(h.GetBucket()) != len(les) {
		t.Fatalf("buckets: got %d, want %d", len(h.GetBucket()), len(les))
	}
	for i, b := range h.GetBucket() {
		if b.GetUpperBound() != les[i] || b.GetCumulativeCount() != want[i] {
			t.Errorf("bucket %d: le=%v count %d, want le=%v count %d", i, b.GetUpperBound(), b.GetCumulativeCount(), les[i], want[i])
		}
	}
	if got, want := h.GetSampleSum(), 13.0085; math.Abs(got-want) > 1e-9 || h.GetSampleCount() != 6 {
		t.Errorf("sum %v count %d, want %v and 6", got, h.GetSampleCount(), want)
	}
}

// Every family parses with Prometheus's text parser, once each (testutil.ScrapeMetrics
// fails on a duplicate series), with the Go runtime's and the process's metrics beside
// Istio's.
func TestExpositionParses(t *testing.T) {
	m := New()
	m.Open(fullLabels).AddSent(1)
	m.DNS("", "").ObserveUpstream("aaaa", "tcp", time.Millisecond, nil)
	mfs := testutil.ScrapeMetrics(t, m.WriteText)
	for _, name := range []string{"istio_tcp_sent_bytes_total", "istio_dns_upstream_request_duration_seconds",
		"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if len(mfs[name].GetMetric()) == 0 {
			t.Errorf("%s: missing", name)
		}
	}
}
