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
		l.SetSource(c.SrcWorkload.Proto, principal(c.SrcIdentity))
	} else {
		l.SourcePrincipal = principal(c.SrcIdentity)
	}
	if c.DstWorkload != nil {
		l.SetDestination(c.DstWorkload.Proto, principal(c.DstIdentity))
	} else {
		l.DestinationPrincipal = principal(c.DstIdentity)
	}
	if c.DstService != nil && c.DstService.Proto != nil {
		l.SetService(c.DstService.Proto)
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

func (cr *connRecord) Close(o Outcome) {
	cr.mc.AddSent(int(o.Sent))
	cr.mc.AddReceived(int(o.Received))
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
