// Package authz converts Istio's security policies (AuthorizationPolicy, PeerAuthentication)
// into the L4 authorizations that istiod-lite serves to ztunnels (istio.security.Authorization),
// with Istio ambient's semantics except for DENY rules ztunnel cannot fully evaluate (below). It
// is pure: no Kubernetes client, no logging, no transport.
//
// What ztunnel cannot evaluate (HTTP fields, L7 conditions) fails closed: an ALLOW rule holding
// it is dropped, so the policy allows less; in a DENY rule it is removed from the source,
// operation or condition holding it, and one left with nothing to match matches every
// connection, so the rule denies more (DESIGN.md section 8). A DENY rule of only HTTP attributes
// thus denies every connection the policy applies to. This is stricter than upstream Istio ambient,
// where such a DENY has no effect at ztunnel (its status says so since istio/istio#61166), and
// matches Istio sidecars on TCP traffic.
//
// An AuthorizationPolicy becomes one Authorization with the same namespace and name; each policy
// rule becomes a Rule whose clauses (all must match) are the rule's to, its from, and each when
// condition, in that order, and each clause's matches (any may match) are the sources,
// operations or the condition. See README.md for the field-by-field table.
//
// A PeerAuthentication becomes DENY authorizations that refuse peers without an identity:
//
//   - "<root>/istio_converted_static_strict" (StaticStrictAuthorization), one rule with one clause
//     {not_principals: [presence]}, listed by every workload that is STRICT on all its ports.
//   - "<ns>/converted_peer_authentication_<name>" (ConvertPeerAuthentication), for a workload
//     policy whose port-level modes differ from the workload's effective mode. If the workload is
//     STRICT it holds one rule: clause {not_principals: [presence]} and one clause
//     {not_destination_ports: [p]} per non-STRICT port p; otherwise one rule per STRICT port p
//     with one match {destination_ports: [p], not_principals: [presence]}. A workload lists it
//     instead of the static policy: a connection matching any DENY is refused, so a port
//     exception could not be expressed next to the static policy.
//
// The effective mode is inherited mesh -> namespace -> workload -> port, UNSET inheriting, no
// policy meaning PERMISSIVE and DISABLE acting as PERMISSIVE. WorkloadPolicyKeys computes what
// each workload lists, from the same resolution that ConvertPeerAuthentication uses.
package authz
