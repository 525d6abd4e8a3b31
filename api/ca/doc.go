// Package ca holds the Go types and gRPC stubs generated from ca.proto: the certificate
// service istiod-lite serves and ztunnel calls (istio.v1.auth.IstioCertificateService),
// wire-compatible with Istio's. Regenerate with make generate; do not edit the *.pb.go files.
//
// istio.io/api/security/v1alpha1 registers the same protobuf names; a binary must not link both.
package ca
