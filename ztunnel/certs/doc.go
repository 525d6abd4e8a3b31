// Package certs is ztunnel's certificate manager (DESIGN.md section 7): it holds one workload
// certificate per SPIFFE identity used by the pods on its node, fetched from istiod-lite's
// IstioCertificateService with ztunnel's own token, impersonating the pod's identity.
//
// An identity is added when a pod using it arrives and removed when the last one leaves
// (reference counts); its certificate is fetched at once, refreshed at half its lifetime, and
// retried with exponential backoff (500 ms doubling, jitter, capped at 150 s, never past the
// current certificate's expiry) when a fetch fails. At most 8 fetches run at a time. The trust
// roots travel with the certificates (the last element of each chain), so a root rotation
// reaches ztunnel with the next refresh.
package certs
