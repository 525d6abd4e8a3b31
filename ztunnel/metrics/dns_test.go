package metrics

import (
	"errors"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/dns"
)

var _ dns.Observer = (*DNS)(nil)

// histogramCount scrapes m and returns the sample count of the histogram name{labels}, 0 if
// there is none.
func histogramCount(t *testing.T, m *Metrics, name string, labels map[string]string) uint64 {
	t.Helper()
	return find(t, m, name, labels).GetHistogram().GetSampleCount()
}

func TestDNS(t *testing.T) {
	m := New()
	pod := m.DNS("productpage", "v1")
	pod.ObserveRequest("a", "udp")
	pod.ObserveRequest("a", "udp")
	pod.ObserveRequest("aaaa", "tcp")
	pod.ObserveUpstream("aaaa", "tcp", 3*time.Millisecond, nil)
	pod.ObserveUpstream("aaaa", "tcp", 5*time.Second, errors.New("no upstream answered"))
	m.DNS("", "").ObserveRequest("srv", "udp")

	aUDP := map[string]string{"request_query_type": "a", "request_protocol": "udp", "source_canonical_service": "productpage", "source_canonical_revision": "v1"}
	aaaaTCP := map[string]string{"request_query_type": "aaaa", "request_protocol": "tcp", "source_canonical_service": "productpage", "source_canonical_revision": "v1"}
	anon := map[string]string{"request_query_type": "srv", "source_canonical_service": "unknown", "source_canonical_revision": "latest"}
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"requests a/udp", "istio_dns_requests_total", aUDP, 2},
		{"requests aaaa/tcp", "istio_dns_requests_total", aaaaTCP, 1},
		{"requests of an unknown pod", "istio_dns_requests_total", anon, 1},
		{"upstream", "istio_dns_upstream_requests_total", aaaaTCP, 2},
		{"failures", "istio_dns_upstream_failures_total", aaaaTCP, 1},
	}
	for _, tt := range tests {
		if got, _ := value(t, m, tt.metric, tt.labels); got != tt.want {
			t.Errorf("%s: %s%v got %v, want %v", tt.name, tt.metric, tt.labels, got, tt.want)
		}
	}
	if got := histogramCount(t, m, "istio_dns_upstream_request_duration_seconds", aaaaTCP); got != 2 {
		t.Errorf("duration samples: got %d, want 2", got)
	}
	var nilM *Metrics
	nilM.DNS("a", "b").ObserveUpstream("a", "udp", time.Second, nil) // no panic
}

// A pod whose workload is not known yet counts as unknown until it is, then keeps its labels
// without asking again.
func TestDNSForLearnsThePodsLabels(t *testing.T) {
	m := New()
	asked, known := 0, false
	pod := m.DNSFor(func() (string, string, bool) {
		asked++
		if !known {
			return "", "", false
		}
		return "reviews", "v2", true
	})
	pod.ObserveRequest("a", "udp")
	known = true
	pod.ObserveRequest("a", "udp")
	pod.ObserveRequest("a", "udp")
	before := map[string]string{"request_query_type": "a", "source_canonical_service": "unknown", "source_canonical_revision": "latest"}
	after := map[string]string{"request_query_type": "a", "source_canonical_service": "reviews", "source_canonical_revision": "v2"}
	if got, _ := value(t, m, "istio_dns_requests_total", before); got != 1 {
		t.Errorf("requests before the workload was known: %v; want 1", got)
	}
	if got, _ := value(t, m, "istio_dns_requests_total", after); got != 2 {
		t.Errorf("requests with the pod's labels: %v; want 2", got)
	}
	if asked != 2 {
		t.Errorf("labels asked %d times; want 2 (not again once known)", asked)
	}
}
