package metrics

import (
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/prom"
)

// dnsLabelNames are the labels of Istio's ztunnel DNS metrics.
var dnsLabelNames = []string{"request_query_type", "request_protocol", "source_canonical_service", "source_canonical_revision"}

// dnsMetrics are the DNS proxy's counters, shared by every pod's [DNS].
type dnsMetrics struct {
	requests, upstream, failures *prom.CounterVec
	duration                     *prom.HistogramVec
}

// dnsBuckets are the upper bounds of istio_dns_upstream_request_duration_seconds, in seconds.
var dnsBuckets = []float64{0.001, 0.005, 0.01, 0.1, 1, 5}

func newDNSMetrics(reg *prom.Registry) *dnsMetrics {
	d := &dnsMetrics{
		requests: prom.NewCounterVec("istio_dns_requests_total", "DNS requests received by the DNS proxy.", dnsLabelNames),
		upstream: prom.NewCounterVec("istio_dns_upstream_requests_total", "DNS requests forwarded to upstream resolvers.", dnsLabelNames),
		failures: prom.NewCounterVec("istio_dns_upstream_failures_total", "DNS requests no upstream resolver answered.", dnsLabelNames),
		duration: prom.NewHistogramVec("istio_dns_upstream_request_duration_seconds",
			"Time upstream resolvers took to answer a forwarded DNS request.", dnsLabelNames, dnsBuckets),
	}
	reg.Register(d.requests, d.upstream, d.failures, d.duration)
	return d
}

// DNS records one pod's DNS proxy queries. It implements ztunnel/dns.Observer; get one per pod
// from [Metrics.DNS] or [Metrics.DNSFor].
type DNS struct {
	m *dnsMetrics
	// labels gives the pod's canonical service and revision, ok once they are known.
	labels func() (service, revision string, ok bool)
	// known caches labels' answer once ok.
	known atomic.Pointer[[2]string]
}

// DNS returns the DNS observer for a pod with the given canonical service and revision (empty
// values are reported as "unknown" and "latest"). A nil *Metrics returns a nil *DNS, whose
// methods do nothing.
func (m *Metrics) DNS(canonicalService, canonicalRevision string) *DNS {
	return m.DNSFor(func() (string, string, bool) { return canonicalService, canonicalRevision, true })
}

// DNSFor returns the DNS observer for a pod whose canonical service and revision labels asks
// for, at each query until it reports ok (the pod's workload may reach ztunnel after its DNS
// proxy starts); until then queries count as "unknown" and "latest".
func (m *Metrics) DNSFor(labels func() (service, revision string, ok bool)) *DNS {
	if m == nil {
		return nil
	}
	return &DNS{m: m.dnsVecs, labels: labels}
}

// pod returns the canonical service and revision labels of the pod.
func (d *DNS) pod() (string, string) {
	if k := d.known.Load(); k != nil {
		return k[0], k[1]
	}
	svc, rev, ok := d.labels()
	k := [2]string{orDefault(svc, unknown), orDefault(rev, latest)}
	if ok {
		d.known.Store(&k)
	}
	return k[0], k[1]
}

// ObserveRequest counts a query of queryType ("a", "aaaa", ...) over protocol ("udp", "tcp").
func (d *DNS) ObserveRequest(queryType, protocol string) {
	if d == nil {
		return
	}
	svc, rev := d.pod()
	d.m.requests.With(queryType, protocol, svc, rev).Inc()
}

// ObserveUpstream counts a forwarded query, its duration, and its failure when err is not nil.
func (d *DNS) ObserveUpstream(queryType, protocol string, took time.Duration, err error) {
	if d == nil {
		return
	}
	svc, rev := d.pod()
	d.m.upstream.With(queryType, protocol, svc, rev).Inc()
	d.m.duration.With(queryType, protocol, svc, rev).Observe(took.Seconds())
	if err != nil {
		d.m.failures.With(queryType, protocol, svc, rev).Inc()
	}
}
