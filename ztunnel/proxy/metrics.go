package proxy

import (
	"context"
	"log/slog"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// MetricsRecorder turns connection records into Istio's TCP metrics and access log lines.
type MetricsRecorder struct {
	m   *metrics.Metrics
	log *slog.Logger
}

// NewMetricsRecorder records into m and writes one access log line per connection to log.
func NewMetricsRecorder(m *metrics.Metrics, log *slog.Logger) *MetricsRecorder {
	return &MetricsRecorder{m: m, log: log}
}

// Open implements Recorder.
func (r *MetricsRecorder) Open(c *Conn) ConnRecord {
	l := metrics.Labels{Reporter: metrics.ReporterSource, ConnectionSecurityPolicy: "none"}
	if c.Direction == Inbound {
		l.Reporter = metrics.ReporterDestination
	}
	if c.MutualTLS {
		l.ConnectionSecurityPolicy = "mutual_tls"
	}
	if c.SrcWorkload != nil {
		l.SetSource(c.SrcWorkload.Resource, principal(c.SrcIdentity))
	} else {
		l.SourcePrincipal = principal(c.SrcIdentity)
	}
	if c.DstWorkload != nil {
		l.SetDestination(c.DstWorkload.Resource, principal(c.DstIdentity))
	} else {
		l.DestinationPrincipal = principal(c.DstIdentity)
	}
	if c.DstService != nil && c.DstService.Resource != nil {
		l.SetService(c.DstService.Resource)
	}
	rec := &connRecord{r: r, c: c}
	rec.mc = r.m.Open(l)
	return rec
}

type connRecord struct {
	r  *MetricsRecorder
	c  *Conn
	mc *metrics.Conn
}

// AddRequest counts bytes from the client: what the connection received, in Istio's terms.
func (cr *connRecord) AddRequest(n int64) { cr.mc.AddReceived(int(n)) }

// AddResponse counts bytes back to the client: what the connection sent.
func (cr *connRecord) AddResponse(n int64) { cr.mc.AddSent(int(n)) }

func (cr *connRecord) Close(o Outcome) {
	// Bytes not reported while flowing (none, when the relay counted them all).
	if rest := uint64(o.Sent) - min(uint64(o.Sent), cr.mc.Received()); rest > 0 {
		cr.mc.AddReceived(int(rest))
	}
	if rest := uint64(o.Received) - min(uint64(o.Received), cr.mc.Sent()); rest > 0 {
		cr.mc.AddSent(int(rest))
	}
	cr.mc.Close()
	rec := cr.mc.Record()
	rec.Direction = string(cr.c.Direction)
	rec.Src, rec.Dst = cr.c.Src, cr.c.Dst
	rec.HBONE = cr.c.Tunnel
	if o.Decision != nil {
		rec.Decision = "deny"
		if o.Decision.Allowed() {
			rec.Decision = "allow"
		}
	}
	rec.Err = o.Err
	metrics.LogAccess(context.Background(), cr.r.log, rec)
}

func principal(id *identity.Identity) string {
	if id == nil {
		return ""
	}
	return id.String()
}
