// Package identity is the SPIFFE workload identity of the mesh:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
//
// Parse and String convert between the URI form and Identity; FromCertificate
// reads the identity of a leaf certificate, which must carry exactly one URI SAN
// and that SAN must parse. VerifyChain checks a peer's certificate chain against
// a pool of trust roots (no host name check: mesh certificates carry no DNS
// names) and returns the identity of the verified leaf; it is meant for
// tls.Config.VerifyConnection, where the standard verification is disabled
// because mesh peers are dialled without SNI.
package identity
