// Package redirect installs and removes the traffic capture of one pod: inside the pod's
// network namespace, its TCP and DNS traffic is sent to ztunnel's listeners there (see the
// data-plane contract in cni/README.md). Backends implement Backend: nftables here, eBPF in
// ebpf.go; both pass the contract test in redirecttest.
package redirect

import (
	"context"
	"errors"
	"net/netip"
)

// The ports and marks of the data-plane contract (DESIGN.md section 3 and 5).
const (
	OutboundPort = 15001 // outbound capture
	InboundPort  = 15006 // inbound plaintext capture
	HBONEPort    = 15008 // inbound HBONE, delivered as is
	DNSPort      = 15053 // DNS proxy, UDP and TCP

	// ZtunnelMark is the SO_MARK of every socket ztunnel opens in a pod netns; packets with
	// it are never captured. Equal to sockopt.ZtunnelMark.
	ZtunnelMark = 0x539
	// MarkMask is the part of the packet mark Ambit uses.
	MarkMask = 0xfff
	// ConnMark marks ztunnel's spoofed inbound connections so the app's replies to the
	// non-local client address are routed back to ztunnel (RouteTable).
	ConnMark = 0x111
	// RouteTable holds `local 0.0.0.0/0 dev lo`, used by packets marked ConnMark.
	RouteTable = 100
	// RulePriority is the priority of the `fwmark ConnMark lookup RouteTable` ip rule.
	RulePriority = 32000
)

// ProbeSource is the address kubelet probes are SNATed to on the node; traffic from it
// bypasses capture.
var ProbeSource = netip.MustParseAddr("169.254.7.127")

// ErrNotSupported is wrapped by a backend's constructor when the kernel lacks what the
// backend needs; the caller then falls back to another backend.
var ErrNotSupported = errors.New("not supported by this kernel")

// Pod is what a backend needs to capture one pod.
type Pod struct {
	UID, Namespace, Name string
	// Netns is the path of the pod's network namespace, e.g. /proc/123/ns/net or
	// /var/run/netns/cni-...
	Netns string
	IPs   []netip.Addr
}

// Backend captures pods' traffic.
type Backend interface {
	// Name is "ebpf" or "nftables".
	Name() string
	// Enroll installs the capture for p. It is idempotent: re-running it reconciles what is
	// installed (the agent re-runs it for every pod when it restarts).
	Enroll(ctx context.Context, p Pod) error
	// Unenroll removes everything Enroll installed for p; nothing installed is not an error.
	Unenroll(ctx context.Context, p Pod) error
}
