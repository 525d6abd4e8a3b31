// Package state is what a ztunnel knows about the mesh: the workloads and services istiod-lite
// sent it (ztunnel/xds writes them through Update, the xds.Sink), and the L4 policies, compiled
// with internal/authz. It answers the questions of the connection path (who is this IP, where
// does this service VIP go, may this connection proceed) with short read locks and without
// allocating, falls back to on-demand lookups through the xDS client for what the node-scoped
// wildcard subscription did not bring (workloads on other nodes, the endpoints of a service),
// and signals policy changes so open connections can be re-checked.
package state
