// Package model turns Kubernetes objects into the workload API that ztunnels consume:
// Workloads (one per pod), Services and Authorizations, keyed as Istio keys them, and keeps a
// store.Store current as the objects change. It is incremental: a change to one object
// recomputes the resources that depend on it, not the world. It knows nothing about how the
// objects arrive (informers or files) or how the resources leave (xDS).
package model

import (
	"fmt"
	"net/netip"
)

// Type URLs of the resources the model produces.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Config is what the model needs to know about the mesh.
type Config struct {
	// ClusterID names the cluster in workload UIDs (Istio's default is "Kubernetes").
	ClusterID string
	// Network is the workloads' network; addresses are unique within it.
	Network string
	// TrustDomain is the SPIFFE trust domain of the workloads' identities.
	TrustDomain string
	// DomainSuffix is the cluster's DNS suffix for Service hostnames.
	DomainSuffix string
	// RootNamespace holds the mesh-wide policies.
	RootNamespace string
}

// DefaultConfig returns Istio's defaults.
func DefaultConfig() Config {
	return Config{ClusterID: "Kubernetes", TrustDomain: "cluster.local", DomainSuffix: "cluster.local", RootNamespace: "istio-system"}
}

// WorkloadUID is the resource name of a pod's Workload: <cluster>//Pod/<namespace>/<name>.
func (c Config) WorkloadUID(namespace, name string) string {
	return fmt.Sprintf("%s//Pod/%s/%s", c.ClusterID, namespace, name)
}

// ServiceHostname is the DNS name of a Service.
func (c Config) ServiceHostname(namespace, name string) string {
	return fmt.Sprintf("%s.%s.svc.%s", name, namespace, c.DomainSuffix)
}

// ServiceKey is the resource name of a Service: <namespace>/<hostname>.
func (c Config) ServiceKey(namespace, name string) string {
	return namespace + "/" + c.ServiceHostname(namespace, name)
}

// AddressAlias is the name a client may subscribe to an address by: <network>/<ip>.
func (c Config) AddressAlias(ip netip.Addr) string {
	return c.Network + "/" + ip.String()
}
