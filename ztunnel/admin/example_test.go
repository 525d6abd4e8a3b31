package admin_test

import (
	"context"
	"log/slog"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// How ztunnel's run wires the operator endpoints.
func Example() {
	var level slog.LevelVar // the LevelVar of the binary's slog handler
	m := metrics.New()
	ready := admin.NewReadiness("xds synced", "zds connected")
	s := admin.New(admin.Config{Level: &level, Metrics: m.WriteText, Ready: ready.Err})
	s.Register(admin.SectionWorkloads, admin.DumperFunc(func() any { return []string{"default/reviews-v1"} }))
	if err := s.Start(context.Background()); err != nil {
		return
	}
	ready.Set("xds synced")
	ready.Set("zds connected")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Stop(ctx)
}
