// Package zds holds the Go types generated from zds.proto: the messages the CNI node agent and
// ztunnel exchange over the node-local ZDS socket (proto package istio.workload.zds),
// wire-compatible with Istio's. Regenerate with make generate; do not edit the *.pb.go files.
package zds
