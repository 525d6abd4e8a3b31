// Package metrics is ztunnel's telemetry: Istio's TCP metrics (istio_tcp_connections_opened_total,
// istio_tcp_connections_closed_total, istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total
// with Istio's standard labels) and DNS proxy metrics (istio_dns_requests_total and the
// istio_dns_upstream_* family) in a registry owned by one ztunnel, and the per-connection
// access log.
//
// The proxy calls [Metrics.Open] once per connection with its [Labels]; that resolves the
// connection's counters once. [Conn.AddSent] and [Conn.AddReceived] then cost one uncontended
// atomic add each; the bytes reach the Prometheus counters when the connection closes and, for
// long-lived connections, whenever the registry is scraped through [Metrics.Gatherer] or
// [Metrics.Handler].
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Metrics holds one ztunnel's registry and its TCP metrics. Create it with [New].
type Metrics struct {
	reg                            *prometheus.Registry
	opened, closed, sent, received *prometheus.CounterVec
	dnsVecs                        *dnsMetrics

	// sets caches the counters of each label set (Labels -> *counterSet): one comparable-struct
	// lookup instead of four label-value lookups in the vectors per connection. Like the
	// vectors themselves, it keeps every label set ever seen.
	sets sync.Map

	// mu guards live, the open connections whose bytes a scrape must flush.
	mu   sync.Mutex
	live map[*Conn]struct{}
}

// New returns metrics in a new registry, which also holds the Go runtime and process
// collectors.
func New() *Metrics {
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labelNames)
	}
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		opened:   vec("istio_tcp_connections_opened_total", "The total number of TCP connections opened."),
		closed:   vec("istio_tcp_connections_closed_total", "The total number of TCP connections closed."),
		sent:     vec("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection."),
		received: vec("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection."),
		live:     make(map[*Conn]struct{}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.opened, m.closed, m.sent, m.received,
	)
	m.dnsVecs = newDNSMetrics(m.reg)
	return m
}

// Registry is where other ztunnel components register their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Gatherer gathers the registry after moving the bytes of open connections into the counters.
func (m *Metrics) Gatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		m.Flush()
		return m.reg.Gather()
	})
}

// Handler serves the registry in the Prometheus exposition format (for /metrics and
// /stats/prometheus).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{})
}

// Flush moves the bytes counted by open connections into the Prometheus counters.
func (m *Metrics) Flush() {
	m.mu.Lock()
	conns := make([]*Conn, 0, len(m.live))
	for c := range m.live {
		conns = append(conns, c)
	}
	m.mu.Unlock()
	for _, c := range conns {
		c.flush()
	}
}

// Open counts a new connection and returns its tracker. A nil *Metrics returns a nil *Conn,
// whose methods do nothing, so a proxy can run without metrics.
func (m *Metrics) Open(l Labels) *Conn {
	if m == nil {
		return nil
	}
	cs := m.counters(l)
	c := &Conn{m: m, closed: cs.closed, sent: cs.sent, received: cs.received, labels: l, start: time.Now()}
	cs.opened.Inc()
	m.mu.Lock()
	m.live[c] = struct{}{}
	m.mu.Unlock()
	return c
}

// counterSet is the four counters of one label set.
type counterSet struct {
	opened, closed, sent, received prometheus.Counter
}

func (m *Metrics) counters(l Labels) *counterSet {
	if cs, ok := m.sets.Load(l); ok {
		return cs.(*counterSet)
	}
	v := l.values()
	cs := &counterSet{
		opened:   m.opened.WithLabelValues(v...),
		closed:   m.closed.WithLabelValues(v...),
		sent:     m.sent.WithLabelValues(v...),
		received: m.received.WithLabelValues(v...),
	}
	got, _ := m.sets.LoadOrStore(l, cs)
	return got.(*counterSet)
}
