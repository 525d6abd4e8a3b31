// Package security holds the Go types generated from authorization.proto: the L4 authorization
// policies (proto package istio.security) that istiod-lite serves to ztunnels as xDS resources,
// wire-compatible with Istio's. Regenerate with make generate; do not edit the *.pb.go files.
package security
