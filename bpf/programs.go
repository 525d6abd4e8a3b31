package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Our programs are cls_bpf filters (direct action) on the clsact ingress hook of each
// interface, at one priority and handle. Not tcx: every tcx attach waits for an RCU grace
// period while holding the RTNL lock (the kernel swaps the device's program array, then
// synchronize_rcu), 4-15 ms on a busy node and twice per pod, where a filter takes under 2 ms.
// The programs' verdicts, TC_ACT_UNSPEC, TC_ACT_OK and TC_ACT_SHOT, have the values of tcx's
// TCX_NEXT, TCX_PASS and TCX_DROP, so the programs would mean the same on either hook.
const (
	filterPrio   = 1
	filterHandle = 1
)

// attached is one of our programs found on an interface.
type attached struct {
	prog   *ebpf.Program
	tag    string
	filter *netlink.BpfFilter
}

func ingressFilters(nh *netlink.Handle, ifindex int) ([]netlink.Filter, error) {
	return nh.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
}

// ours returns our programs named name among the TC ingress filters of ifindex in the current
// netns. The caller closes them.
func ours(nh *netlink.Handle, ifindex int, name string) ([]attached, error) {
	filters, err := ingressFilters(nh, ifindex)
	if err != nil {
		return nil, fmt.Errorf("listing tc ingress filters of interface %d: %w", ifindex, err)
	}
	var found []attached
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Id == 0 {
			continue
		}
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(bf.Id))
		if errors.Is(err, unix.ENOENT) {
			continue // removed meanwhile
		}
		if err != nil {
			closeAll(found)
			return nil, fmt.Errorf("opening program %d: %w", bf.Id, err)
		}
		info, err := p.Info()
		if err != nil || info.Name != name {
			p.Close()
			continue
		}
		found = append(found, attached{prog: p, tag: info.Tag, filter: bf})
	}
	return found, nil
}

func closeAll(as []attached) {
	for _, a := range as {
		a.prog.Close()
	}
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
	}}
}

// attachFilter makes prog our filter on the ingress of ifindex, adding the clsact qdisc if the
// interface has none. Over a filter of ours it swaps the program atomically: no packet passes
// uncaptured in between.
func attachFilter(nh *netlink.Handle, ifindex int, name string, prog *ebpf.Program) error {
	if err := nh.QdiscAdd(clsact(ifindex)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the clsact qdisc to interface %d: %w", ifindex, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
			Priority: filterPrio, Handle: filterHandle, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: name, DirectAction: true,
	}
	if err := nh.FilterReplace(f); err != nil {
		return fmt.Errorf("attaching %s to tc ingress of interface %d (priority %d, handle %d): %w", name, ifindex, filterPrio, filterHandle, err)
	}
	return nil
}

func detach(nh *netlink.Handle, a attached) error {
	if err := nh.FilterDel(a.filter); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting the tc ingress filter of interface %d: %w", a.filter.LinkIndex, err)
	}
	return nil
}

// uninstall removes every filter of ours named name from ifindex, then the clsact qdisc if no
// filter is left on it (nothing else uses a clsact without filters).
func uninstall(nh *netlink.Handle, ifindex int, name string) error {
	have, err := ours(nh, ifindex, name)
	if err != nil {
		return err
	}
	defer closeAll(have)
	for _, a := range have {
		if err := detach(nh, a); err != nil {
			return err
		}
	}
	return removeEmptyClsact(nh, ifindex)
}

func removeEmptyClsact(nh *netlink.Handle, ifindex int) error {
	dev := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	qdiscs, err := nh.QdiscList(dev)
	if err != nil {
		return fmt.Errorf("listing qdiscs of interface %d: %w", ifindex, err)
	}
	if !slices.ContainsFunc(qdiscs, func(q netlink.Qdisc) bool { return q.Type() == "clsact" }) {
		return nil
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := nh.FilterList(dev, parent)
		if err != nil {
			return fmt.Errorf("listing tc filters of interface %d: %w", ifindex, err)
		}
		if len(filters) > 0 {
			return nil
		}
	}
	if err := nh.QdiscDel(clsact(ifindex)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("deleting the clsact qdisc of interface %d: %w", ifindex, err)
	}
	return nil
}

// refreshMaps writes addrs and the egress interface into the maps of the attached outbound
// program prog.
func refreshMaps(prog *ebpf.Program, addrs []netip.Addr, egress int) error {
	la, err := programMap(prog, "local_addrs")
	if err != nil {
		return err
	}
	defer la.Close()
	if err := syncLocalAddrs(la, addrs); err != nil {
		return err
	}
	cfg, err := programMap(prog, "config")
	if err != nil {
		return err
	}
	defer cfg.Close()
	return setEgress(cfg, egress)
}

// syncLocalAddrs makes m, an outbound program's local_addrs map, hold exactly addrs.
func syncLocalAddrs(m *ebpf.Map, addrs []netip.Addr) error {
	want := map[[4]byte]bool{}
	for _, a := range addrs {
		if a.Is4() {
			want[a.As4()] = true
		}
	}
	var (
		key   [4]byte
		value uint8
		stale [][4]byte
	)
	it := m.Iterate()
	for it.Next(&key, &value) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading local_addrs: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting from local_addrs: %w", err)
		}
	}
	for k := range want {
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("adding to local_addrs: %w", err)
		}
	}
	return nil
}

// setEgress stores in m, an outbound program's config map, the interface through which
// send_out (outbound.c) sends packets of connections opened before enrolment.
func setEgress(m *ebpf.Map, ifindex int) error {
	if err := m.Put(uint32(0), outboundConfig{EgressIfindex: uint32(ifindex)}); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	return nil
}

// programMapID returns the id of the map called name that prog uses, or 0.
func programMapID(prog *ebpf.Program, name string) ebpf.MapID {
	m, err := programMap(prog, name)
	if err != nil {
		return 0
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return id
}

// programTag returns the tag of prog, or "".
func programTag(prog *ebpf.Program) string {
	info, err := prog.Info()
	if err != nil {
		return ""
	}
	return info.Tag
}

// programMap opens the map called name that prog uses.
func programMap(prog *ebpf.Program, name string) (*ebpf.Map, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading program info: %w", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, fmt.Errorf("reading map ids of program %s: %w", info.Name, ErrNotSupported)
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("opening map %d: %w", id, err)
		}
		mi, err := m.Info()
		if err == nil && mi.Name == name {
			return m, nil
		}
		m.Close()
	}
	return nil, fmt.Errorf("program %s has no map %s", info.Name, name)
}
