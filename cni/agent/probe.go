package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/cni/redirect"
	"github.com/ambit-mesh/ambit/internal/netns"
)

// nodeTable is the nftables table (family ip) the agent owns in the node's netns.
const nodeTable = "ambit-node"

// probeSet holds the IPs of enrolled pods.
const probeSet = "ambient-pods"

// syncProbeRules (re)creates, atomically, the one host rule of the data plane in the node netns
// at nodeNetns: TCP from local sockets owned by root (the kubelet) to an enrolled pod is SNATed
// to redirect.ProbeSource, which the pod's capture lets through, so probes reach the app
// directly and are not subject to mesh policy.
func syncProbeRules(nodeNetns string, podIPs []netip.Addr) error {
	c, err := nodeNFTables(nodeNetns)
	if err != nil {
		return fmt.Errorf("installing probe rule: %w", err)
	}
	defer c.CloseLasting()

	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nodeTable}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	set := &nftables.Set{Table: t, Name: probeSet, KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	ips := slices.Clone(podIPs)
	slices.SortFunc(ips, netip.Addr.Compare)
	ips = slices.Compact(ips)
	for _, ip := range ips {
		if ip.Is4() {
			elems = append(elems, nftables.SetElement{Key: ip.AsSlice()})
		}
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("installing probe rule: set: %w", err)
	}
	policy := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &policy})
	c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: probeRule(set)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing probe rule in node netns: %w", err)
	}
	return nil
}

// probeRule is `meta skuid 0 meta l4proto tcp ip daddr @ambient-pods snat to 169.254.7.127`.
func probeRule(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Immediate{Register: 1, Data: redirect.ProbeSource.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

// removeProbeRules deletes the node table; absent is fine.
func removeProbeRules(nodeNetns string) error {
	c, err := nodeNFTables(nodeNetns)
	if err != nil {
		return fmt.Errorf("removing probe rule: %w", err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("removing probe rule: listing tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == nodeTable {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("removing probe rule: %w", err)
			}
		}
	}
	return nil
}

// nodeNFTables opens a lasting nftables connection inside the node's network namespace.
func nodeNFTables(nodeNetns string) (*nftables.Conn, error) {
	h, err := netns.Open(nodeNetns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var c *nftables.Conn
	if err := h.Do(func() error {
		var err error
		c, err = nftables.New(nftables.AsLasting())
		return err
	}); err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return c, nil
}
