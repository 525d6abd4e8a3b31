// Package xds is ztunnel's client of istiod-lite's delta Aggregated Discovery Service: it
// subscribes to workloads and services (istio.workload.Address) and to L4 policies
// (istio.security.Authorization), hands every change to a Sink, and acknowledges each response,
// refusing (NACK) the resources that do not decode or that the Sink refuses while keeping the
// stream.
//
// istiod-lite scopes a wildcard subscription to the client's node (istiod-lite/README.md): all
// Services and Authorizations, and the Workloads of the node's pods. Anything else is asked for
// by name with Lookup (a workload UID, a Service key, or an address alias "<network>/<ip>"),
// which returns once the server has answered with the resource or its removal. Names stay
// subscribed, so later changes to them keep arriving.
//
// The client reconnects with exponential backoff and jitter, sending the versions it holds
// (initial_resource_versions) so the server skips what is unchanged and removes what went away
// while it was disconnected.
package xds
