// Package workload holds the Go types generated from workload.proto: the workload discovery
// API (proto package istio.workload) that istiod-lite serves to ztunnels and waypoints as
// xDS resources, wire-compatible with Istio's. Regenerate with make generate; do not edit the
// *.pb.go files.
package workload
