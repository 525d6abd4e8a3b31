package server

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
)

// metrics are istiod-lite's Prometheus metrics, named as Istio's istiod names them where it
// has an equivalent.
type metrics struct {
	reg        *prometheus.Registry
	csrs       prometheus.Counter
	issued     prometheus.Counter
	caRefusals *prometheus.CounterVec
}

func newMetrics(s *Server, x *xds.Server) (*metrics, error) {
	m := &metrics{
		reg:    prometheus.NewRegistry(),
		csrs:   prometheus.NewCounter(prometheus.CounterOpts{Name: "citadel_server_csr_count", Help: "Certificate signing requests received."}),
		issued: prometheus.NewCounter(prometheus.CounterOpts{Name: "citadel_server_success_cert_issuance_count", Help: "Certificates issued."}),
		caRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istiod_lite_ca_refusals_total",
			Help: "Certificate requests refused, by gRPC status code."}, []string{"code"}),
	}
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.csrs, m.issued, m.caRefusals,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilot_xds", Help: "xDS clients connected."},
			func() float64 { return float64(x.Streams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pilot_xds_pushes", Help: "xDS responses sent."},
			func() float64 { return float64(x.Pushes()) }),
	}
	for _, t := range []struct{ name, url string }{{"address", model.AddressType}, {"authorization", model.AuthorizationType}} {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "istiod_lite_resources", Help: "Resources served, by type.",
			ConstLabels: prometheus.Labels{"type": t.name}}, func() float64 { return float64(s.Store.Len(t.url)) }))
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

// caInterceptor counts certificate requests and their outcomes.
func (m *metrics) caInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if info.FullMethod != "/istio.v1.auth.IstioCertificateService/CreateCertificate" {
		return resp, err
	}
	m.csrs.Inc()
	if err != nil {
		m.caRefusals.WithLabelValues(status.Code(err).String()).Inc()
	} else {
		m.issued.Inc()
	}
	return resp, err
}
