package cluster

import (
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// The fabric is the cluster's network: a bridge in a namespace of its own that every machine
// (control plane and nodes) joins through a veth pair, like hosts on one switch. The fabric
// namespace is also the cluster's router (pod CIDRs routed to their nodes) and the place the
// test process dials from. Nothing is added to the machine's root network namespace. Each
// cluster has its own namespaces, so two clusters can use the same addresses.
const (
	fabricBridge = "fabric0"
	fabricPrefix = 24
)

var (
	// fabricGateway is the fabric namespace's address on the bridge.
	fabricGateway = net.IPv4(10, 250, 0, 1)
	// controlPlaneIP is the control-plane machine's address.
	controlPlaneIP = net.IPv4(10, 250, 0, 2)
	// clusterCIDR holds every node's pod CIDR.
	clusterCIDR = "10.244.0.0/16"
	// serviceCIDR is the Services' ClusterIP range; its first address is the kubernetes Service.
	serviceCIDR = "10.96.0.0/16"
)

// nodeIP is the fabric address of node i (0-based).
func nodeIP(i int) net.IP { return net.IPv4(10, 250, 0, byte(11+i)) }

// podCIDR is the pod CIDR of node i (0-based).
func podCIDR(i int) *net.IPNet {
	return &net.IPNet{IP: net.IPv4(10, 244, byte(i+1), 0).To4(), Mask: net.CIDRMask(24, 32)}
}

// netlinkAt opens a netlink handle whose socket lives in the sandbox's network namespace.
func netlinkAt(s *sandbox) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(s.ns.Fd()))
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", s.name, err)
	}
	return h, nil
}

// setupFabric creates the bridge in the fabric namespace and turns it into a router.
func setupFabric(fab *sandbox) error {
	h, err := netlinkAt(fab)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fabricBridge}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("creating fabric bridge: %w", err)
	}
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: fabricGateway, Mask: net.CIDRMask(fabricPrefix, 32)}}); err != nil {
		return fmt.Errorf("addressing fabric bridge: %w", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up fabric bridge: %w", err)
	}
	// ip_forward is per network namespace: this only makes the fabric namespace a router.
	return fab.ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enabling forwarding in the fabric: %w", err)
		}
		return nil
	})
}

// attach plugs machine m into the fabric with address ip: a veth pair whose fabric end joins
// the bridge and whose other end is m's eth0, with a default route through the fabric.
func attach(fab, m *sandbox, ip net.IP, port string) error {
	fh, err := netlinkAt(fab)
	if err != nil {
		return err
	}
	defer fh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: 1500},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(m.ns.Fd()),
	}
	if err := fh.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating fabric link of %s: %w", m.name, err)
	}
	br, err := fh.LinkByName(fabricBridge)
	if err != nil {
		return fmt.Errorf("finding fabric bridge: %w", err)
	}
	if err := fh.LinkSetMaster(veth, br); err != nil {
		return fmt.Errorf("joining %s to the fabric: %w", m.name, err)
	}
	if err := fh.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bringing up fabric port of %s: %w", m.name, err)
	}

	mh, err := netlinkAt(m)
	if err != nil {
		return err
	}
	defer mh.Close()
	if err := linkUp(mh, "lo"); err != nil {
		return err
	}
	eth, err := mh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0 of %s: %w", m.name, err)
	}
	if err := mh.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(fabricPrefix, 32)}}); err != nil {
		return fmt.Errorf("addressing %s: %w", m.name, err)
	}
	if err := mh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bringing up eth0 of %s: %w", m.name, err)
	}
	if err := mh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: fabricGateway}); err != nil {
		return fmt.Errorf("adding default route of %s: %w", m.name, err)
	}
	return nil
}

// routePodCIDR routes a node's pod CIDR to the node from machine m (the fabric or a peer node).
func routePodCIDR(m *sandbox, cidr *net.IPNet, via net.IP) error {
	h, err := netlinkAt(m)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Dst: cidr, Gw: via}); err != nil {
		return fmt.Errorf("routing %s via %s in %s: %w", cidr, via, m.name, err)
	}
	return nil
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bringing up %s: %w", name, err)
	}
	return nil
}
