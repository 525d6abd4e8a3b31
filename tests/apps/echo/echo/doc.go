// Package echo is the logic of the Ambit end-to-end test application: a
// server that answers every request on HTTP/1.1, HTTP/2 cleartext, gRPC and
// raw TCP ports with the identity of the pod that served it, and a client that
// sends a batch of requests and summarises who answered.
//
// The cmd in the parent folder wraps it for use in a Kubernetes test cluster;
// tests use it in-process on loopback.
package echo
