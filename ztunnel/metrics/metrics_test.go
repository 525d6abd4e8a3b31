package metrics

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/ambit-mesh/ambit/internal/apiwire"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// find scrapes m and returns the metric name{labels}, or nil if there is none.
func find(t *testing.T, m *Metrics, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	for _, mf := range testutil.ScrapeMetrics(t, m.WriteText) {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metric
				}
			}
			return m
		}
	}
	return nil
}

// value scrapes m and returns the counter name{labels}, and whether it exists.
func value(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	c := find(t, m, name, labels)
	if c == nil {
		return 0, false
	}
	return c.GetCounter().GetValue(), true
}

var fullLabels = Labels{
	Reporter:                     ReporterDestination,
	SourceWorkload:               "productpage-v1",
	SourceCanonicalService:       "productpage",
	SourceCanonicalRevision:      "v1",
	SourceWorkloadNamespace:      "default",
	SourcePrincipal:              "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
	SourceApp:                    "productpage",
	SourceVersion:                "v1",
	SourceCluster:                "Kubernetes",
	DestinationService:           "reviews.default.svc.cluster.local",
	DestinationServiceNamespace:  "default",
	DestinationServiceName:       "reviews",
	DestinationWorkload:          "reviews-v2",
	DestinationCanonicalService:  "reviews",
	DestinationCanonicalRevision: "v2",
	DestinationWorkloadNamespace: "default",
	DestinationPrincipal:         "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
	DestinationApp:               "reviews",
	DestinationVersion:           "v2",
	DestinationCluster:           "Kubernetes",
	ConnectionSecurityPolicy:     SecurityMutualTLS,
}

func TestLabels(t *testing.T) {
	tests := []struct {
		name   string
		labels Labels
		want   map[string]string
	}{
		{
			name:   "empty values are unknown",
			labels: Labels{},
			want: map[string]string{
				"reporter": "unknown", "source_workload": "unknown", "source_principal": "unknown",
				"source_canonical_service": "unknown", "source_canonical_revision": "latest", "destination_canonical_revision": "latest",
				"destination_service": "unknown", "destination_workload": "unknown", "destination_cluster": "unknown",
				"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "unknown",
			},
		},
		{
			name:   "all set",
			labels: fullLabels,
			want: map[string]string{
				"reporter": "destination", "source_workload": "productpage-v1", "source_canonical_service": "productpage",
				"source_canonical_revision": "v1", "source_workload_namespace": "default",
				"source_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage", "source_app": "productpage",
				"source_version": "v1", "source_cluster": "Kubernetes",
				"destination_service": "reviews.default.svc.cluster.local", "destination_service_namespace": "default",
				"destination_service_name": "reviews", "destination_workload": "reviews-v2",
				"destination_canonical_service": "reviews", "destination_canonical_revision": "v2",
				"destination_workload_namespace": "default", "destination_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
				"destination_app": "reviews", "destination_version": "v2", "destination_cluster": "Kubernetes",
				"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
			},
		},
		{
			name:   "plaintext with flags",
			labels: Labels{Reporter: ReporterSource, ConnectionSecurityPolicy: SecurityNone, ResponseFlags: "UF"},
			want:   map[string]string{"reporter": "source", "connection_security_policy": "none", "response_flags": "UF"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New()
			m.Open(tt.labels).Close()
			for _, name := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
				got, ok := value(t, m, name, tt.want)
				if !ok || got != 1 {
					t.Errorf("%s%v: got %v (found %v), want 1", name, tt.want, got, ok)
				}
			}
			for _, mf := range testutil.ScrapeMetrics(t, m.WriteText) {
				if mf.GetName() == "istio_tcp_connections_opened_total" {
					if got := len(mf.GetMetric()[0].GetLabel()); got != len(labelNames) {
						t.Errorf("label count: got %d, want %d", got, len(labelNames))
					}
				}
			}
		})
	}
}

func TestBytes(t *testing.T) {
	m := New()
	sent := func() float64 { v, _ := value(t, m, "istio_tcp_sent_bytes_total", nil); return v }
	recv := func() float64 { v, _ := value(t, m, "istio_tcp_received_bytes_total", nil); return v }
	closed := func() float64 { v, _ := value(t, m, "istio_tcp_connections_closed_total", nil); return v }

	c := m.Open(fullLabels)
	c.AddSent(100)
	c.AddReceived(7)
	c.AddSent(-1) // ignored
	steps := []struct {
		name                   string
		do                     func()
		wantSent, wantReceived float64
		wantClosed             float64
	}{
		{name: "scrape flushes an open connection", do: func() {}, wantSent: 100, wantReceived: 7},
		{name: "scrape again adds only the delta", do: func() { c.AddSent(50) }, wantSent: 150, wantReceived: 7},
		{name: "close flushes the rest", do: func() { c.AddReceived(3); c.Close() }, wantSent: 150, wantReceived: 10, wantClosed: 1},
		{name: "close twice counts once", do: func() { c.Close() }, wantSent: 150, wantReceived: 10, wantClosed: 1},
		{name: "bytes after close are not reported", do: func() { c.AddSent(1000) }, wantSent: 150, wantReceived: 10, wantClosed: 1},
	}
	for _, s := range steps {
		s.do()
		if got := sent(); got != s.wantSent {
			t.Errorf("%s: sent got %v, want %v", s.name, got, s.wantSent)
		}
		if got := recv(); got != s.wantReceived {
			t.Errorf("%s: received got %v, want %v", s.name, got, s.wantReceived)
		}
		if got := closed(); got != s.wantClosed {
			t.Errorf("%s: closed got %v, want %v", s.name, got, s.wantClosed)
		}
	}
	if d1, d2 := c.Duration(), c.Duration(); d1 <= 0 || d1 != d2 {
		t.Errorf("Duration after close: got %v then %v, want a fixed positive value", d1, d2)
	}
	if len(m.live) != 0 {
		t.Errorf("live connections after close: got %d, want 0", len(m.live))
	}
}

func TestConcurrent(t *testing.T) {
	m := New()
	const conns, writes = 8, 1000
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			c := m.Open(fullLabels)
			var inner sync.WaitGroup
			inner.Go(func() {
				for range writes {
					c.AddSent(1)
				}
			})
			inner.Go(func() {
				for range writes {
					c.AddReceived(2)
				}
			})
			inner.Wait()
			c.Close()
		})
	}
	wg.Go(func() {
		for range 20 {
			m.Flush()
		}
	})
	wg.Wait()
	for _, tt := range []struct {
		name string
		want float64
	}{
		{"istio_tcp_sent_bytes_total", conns * writes},
		{"istio_tcp_received_bytes_total", 2 * conns * writes},
		{"istio_tcp_connections_opened_total", conns},
		{"istio_tcp_connections_closed_total", conns},
	} {
		if got, _ := value(t, m, tt.name, nil); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNil(t *testing.T) {
	var m *Metrics
	c := m.Open(fullLabels)
	c.AddSent(1)
	c.AddReceived(1)
	c.Close()
	if c.Sent() != 0 || c.Received() != 0 || c.Duration() != 0 || c.Labels() != (Labels{}) {
		t.Errorf("nil Conn: got non-zero values")
	}
}

// A scrape flushes the bytes of open connections first.
func TestWriteText(t *testing.T) {
	m := New()
	c := m.Open(fullLabels)
	c.AddSent(42)
	var body bytes.Buffer
	if err := m.WriteText(&body); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls",destination_app="reviews",`,
		`reporter="destination",request_protocol="tcp",response_flags="-",source_app="productpage",source_canonical_revision="v1",source_canonical_service="productpage",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage",source_version="v1",source_workload="productpage-v1",source_workload_namespace="default"} 42`,
		"istio_tcp_connections_opened_total{",
		"go_goroutines ",
	} {
		if !strings.Contains(body.String(), want) {
			t.Errorf("exposition: missing %q", want)
		}
	}
	c.Close()
}

func BenchmarkAddSent(b *testing.B) {
	m := New()
	c := m.Open(fullLabels)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.AddSent(1500)
		}
	})
	c.Close()
}

func BenchmarkOpenClose(b *testing.B) {
	m := New()
	for b.Loop() {
		m.Open(fullLabels).Close()
	}
}

func TestSetLabels(t *testing.T) {
	productpage := &apiwire.Workload{Name: "productpage-v1-abc", Namespace: "default", WorkloadName: "productpage-v1",
		CanonicalName: "productpage", CanonicalRevision: "v1", ClusterID: "Kubernetes"}
	reviews := &apiwire.Workload{Name: "reviews-v2-xyz", Namespace: "default", WorkloadName: "reviews-v2",
		CanonicalName: "reviews", CanonicalRevision: "v2", ClusterID: "Kubernetes"}
	svc := &apiwire.Service{Name: "reviews", Namespace: "default", Hostname: "reviews.default.svc.cluster.local"}

	l := Labels{Reporter: ReporterDestination, ConnectionSecurityPolicy: SecurityMutualTLS, SourceApp: "stale"}
	l.SetSource(productpage, fullLabels.SourcePrincipal)
	l.SetDestination(reviews, fullLabels.DestinationPrincipal)
	l.SetService(svc)
	if l != fullLabels {
		t.Errorf("labels:\n got %+v\nwant %+v", l, fullLabels)
	}

	var empty Labels
	empty.SetSource(nil, "")
	empty.SetDestination(nil, "spiffe://cluster.local/ns/a/sa/b")
	empty.SetService(nil)
	if want := (Labels{DestinationPrincipal: "spiffe://cluster.local/ns/a/sa/b"}); empty != want {
		t.Errorf("labels from nil: got %+v, want %+v", empty, want)
	}
}
