// Package metrics is ztunnel's telemetry: Istio's TCP metrics (istio_tcp_connections_opened_total,
// istio_tcp_connections_closed_total, istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total
// with Istio's standard labels) and DNS proxy metrics (istio_dns_requests_total and the
// istio_dns_upstream_* family) in a registry owned by one ztunnel, and the per-connection
// access log.
//
// The proxy calls [Metrics.Open] once per connection with its [Labels]; that resolves the
// connection's counters once. [Conn.AddSent] and [Conn.AddReceived] then cost one uncontended
// atomic add each; the bytes reach the counters when the connection closes and, for
// long-lived connections, whenever the metrics are scraped ([Metrics.WriteText]).
//
// The exposition is internal/prom's, not client_golang's: ztunnel's resident memory is mostly
// its binary's pages (issue #4), and client_golang cost 0.6 MB of them.
package metrics

import (
	"io"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/prom"
)

// Metrics holds one ztunnel's registry and its TCP metrics. Create it with [New].
type Metrics struct {
	reg                            *prom.Registry
	opened, closed, sent, received *prom.CounterVec
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
	vec := func(name, help string) *prom.CounterVec { return prom.NewCounterVec(name, help, labelNames) }
	m := &Metrics{
		reg:      prom.NewRegistry(),
		opened:   vec("istio_tcp_connections_opened_total", "The total number of TCP connections opened."),
		closed:   vec("istio_tcp_connections_closed_total", "The total number of TCP connections closed."),
		sent:     vec("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection."),
		received: vec("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection."),
		live:     make(map[*Conn]struct{}),
	}
	m.reg.Register(prom.NewGoCollector(), prom.NewProcessCollector(), m.opened, m.closed, m.sent, m.received)
	m.dnsVecs = newDNSMetrics(m.reg)
	return m
}

// WriteText writes the registry in the Prometheus text format 0.0.4 (media type
// prom.ContentType; admin serves it at /metrics and /stats/prometheus), after moving the
// bytes of open connections into the counters.
func (m *Metrics) WriteText(w io.Writer) error {
	m.Flush()
	return m.reg.WriteText(w)
}

// Flush moves the bytes counted by open connections into the counters.
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
	opened, closed, sent, received *prom.Counter
}

func (m *Metrics) counters(l Labels) *counterSet {
	if cs, ok := m.sets.Load(l); ok {
		return cs.(*counterSet)
	}
	v := l.values()
	cs := &counterSet{
		opened:   m.opened.With(v...),
		closed:   m.closed.With(v...),
		sent:     m.sent.With(v...),
		received: m.received.With(v...),
	}
	got, _ := m.sets.LoadOrStore(l, cs)
	return got.(*counterSet)
}
