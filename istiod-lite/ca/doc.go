// Package ca is istiod-lite's certificate authority: it signs workload certificates for the
// gRPC service istio.v1.auth.IstioCertificateService (api/ca) and publishes the trust root.
//
// Three concerns, one file group each:
//
//   - signing (authority.go, cacerts.go, csr.go): an ECDSA P-256 self-signed root or a
//     user-provided CA from Istio's cacerts secret; leaves carry exactly one URI SAN, the SPIFFE
//     id the CA decided, and no subject.
//   - deciding who gets which identity (authn.go, authz.go, pods.go): the caller's
//     service-account token is checked with a TokenReview; a trusted node agent (ztunnel) may
//     ask for the identity of a pod scheduled on its own node, looked up in an informer cache
//     indexed by node name.
//   - serving (server.go) and publishing the root into every namespace (rootcert.go).
//
// The package logs nothing: it returns errors, and writes audit lines only to the
// *slog.Logger given in Config.
package ca
