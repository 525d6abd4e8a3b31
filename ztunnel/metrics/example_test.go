package metrics_test

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// How the proxy reports one connection.
func Example() {
	m := metrics.New() // one per ztunnel; admin serves m.WriteText on :15020
	log := slog.Default()

	l := metrics.Labels{Reporter: metrics.ReporterDestination, ConnectionSecurityPolicy: metrics.SecurityMutualTLS}
	l.SetSource(nil, "spiffe://cluster.local/ns/default/sa/productpage")
	c := m.Open(l)
	c.AddReceived(512) // in the copy loops, after each read
	c.AddSent(2048)
	c.Close()

	r := c.Record()
	r.Direction = "inbound"
	r.Src = netip.MustParseAddrPort("10.244.1.5:41000")
	r.Dst = netip.MustParseAddrPort("10.244.2.7:9080")
	r.Decision = "allow"
	metrics.LogAccess(context.Background(), log, r)
}
