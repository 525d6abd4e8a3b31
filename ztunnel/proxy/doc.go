// Package proxy is ztunnel's data path for the pods of its node. For each pod it serves the
// listeners that capture opens inside the pod's network namespace (DESIGN.md section 3):
//
//   - 15001 outbound: the app's connections, sent on over HBONE to the destination's node (or
//     as plain TCP to destinations outside the mesh, or straight through when unknown);
//   - 15008 HBONE inbound: tunnels from other ztunnels, authorized with the peer's identity;
//   - 15006 plaintext inbound: connections from outside the mesh, authorized without one.
//
// Inbound connections reach the app from a socket bound to the real client address, so the app
// sees the true source. The package knows nothing of xDS, ZDS or Kubernetes: what it needs of
// the mesh comes through the Mesh, Certs and Tunnel interfaces.
package proxy
