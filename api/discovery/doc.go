// Package discovery holds the Go types generated from discovery.proto, the delta xDS messages
// ztunnel exchanges with istiod-lite, and [DeltaAggregatedResourcesMethod], the path of Envoy's
// delta Aggregated Discovery Service stream that carries them. The messages are wire-compatible with Envoy's
// (go-control-plane's envoy/service/discovery/v3) but carry only the fields ztunnel uses, so
// ztunnel links none of Envoy's API tree. Regenerate with make generate; do not edit the
// *.pb.go files.
package discovery
