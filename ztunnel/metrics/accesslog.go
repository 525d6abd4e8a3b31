package metrics

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Record is one access log line: a connection as ztunnel saw it at close.
type Record struct {
	// Direction is "inbound" (this ztunnel is the destination's) or "outbound".
	Direction string
	Src, Dst  netip.AddrPort
	// HBONE is the tunnel endpoint the connection went through (a peer ztunnel's or a
	// waypoint's :15008); invalid when the connection was not tunnelled.
	HBONE netip.AddrPort
	// Labels give the identities, workloads and Service of both ends.
	Labels Labels
	// Decision is the policy outcome: "allow" or "deny"; "" when no policy was evaluated.
	Decision string
	Sent     uint64
	Received uint64
	Duration time.Duration
	Err      error
}

// Record returns the connection's labels, byte counts and duration as an access log record,
// for the caller to complete with addresses, decision and error.
func (c *Conn) Record() Record {
	return Record{Labels: c.Labels(), Sent: c.Sent(), Received: c.Received(), Duration: c.Duration()}
}

// LogAccess writes r as one "connection complete" line to log, at Info level, or at Warn when
// the connection failed or was denied. A nil log discards it.
func LogAccess(ctx context.Context, log *slog.Logger, r Record) {
	if log == nil {
		return
	}
	level := slog.LevelInfo
	if r.Err != nil || r.Decision == "deny" {
		level = slog.LevelWarn
	}
	if !log.Enabled(ctx, level) {
		return
	}
	l := r.Labels
	attrs := make([]slog.Attr, 0, 20)
	str := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	str("direction", r.Direction)
	if r.Src.IsValid() {
		attrs = append(attrs, slog.String("src.addr", r.Src.String()))
	}
	str("src.workload", l.SourceWorkload)
	str("src.namespace", l.SourceWorkloadNamespace)
	str("src.identity", l.SourcePrincipal)
	if r.Dst.IsValid() {
		attrs = append(attrs, slog.String("dst.addr", r.Dst.String()))
	}
	if r.HBONE.IsValid() {
		attrs = append(attrs, slog.String("dst.hbone_addr", r.HBONE.String()))
	}
	str("dst.service", l.DestinationService)
	str("dst.workload", l.DestinationWorkload)
	str("dst.namespace", l.DestinationWorkloadNamespace)
	str("dst.identity", l.DestinationPrincipal)
	str("security", l.ConnectionSecurityPolicy)
	str("policy", r.Decision)
	attrs = append(attrs,
		slog.Uint64("bytes_sent", r.Sent),
		slog.Uint64("bytes_recv", r.Received),
		slog.Duration("duration", r.Duration),
	)
	if r.Err != nil {
		attrs = append(attrs, slog.String("error", r.Err.Error()))
	}
	log.LogAttrs(ctx, level, "connection complete", attrs...)
}
