// Package authz evaluates L4 authorization policies (api/security Authorization as
// internal/apiwire decodes it; istiod-lite converts them from AuthorizationPolicy and
// PeerAuthentication) against one inbound connection, with the semantics of DESIGN.md
// section 8.
//
// A policy is compiled once (Compile) into a form that evaluates without allocating: CIDRs are
// parsed, string matches are tagged. A Set indexes compiled policies by scope; Set.Evaluate picks
// the candidates for a destination (the GLOBAL policies, the NAMESPACE policies of the
// destination's namespace and the WORKLOAD_SELECTOR policies the destination workload lists)
// and decides:
//
//  1. any DENY policy that matches denies;
//  2. with no ALLOW policy among the candidates, the connection is allowed;
//  3. any ALLOW policy that matches allows;
//  4. otherwise the connection is denied.
//
// A policy matches when any of its rules does; a policy without rules matches nothing. A rule
// matches when all its clauses do (a rule without clauses matches everything); a clause when any
// of its matches does (a clause without matches matches everything). A match constraining no
// field matches nothing. Within a match every field set must hold: for a positive field one of
// its values must match, for a not_ field none may. Principals are compared without "spiffe://";
// a connection without identity (plaintext) has no principal, namespace or service account.
//
// Dry-run policies are compiled and listed but never decide: Evaluate skips them.
package authz
