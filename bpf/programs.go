package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// attached is one of our programs found on an interface.
type attached struct {
	prog *ebpf.Program
	tag  string
}

// ours returns our programs named name attached to tcx ingress of ifindex in the current netns.
// The caller closes them.
func ours(ifindex int, name string) ([]attached, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("querying tcx programs of interface %d: %w", ifindex, err)
	}
	var found []attached
	for _, ap := range res.Programs {
		p, err := ebpf.NewProgramFromID(ap.ID)
		if errors.Is(err, unix.ENOENT) {
			continue // detached meanwhile
		}
		if err != nil {
			closeAll(found)
			return nil, fmt.Errorf("opening program %d: %w", ap.ID, err)
		}
		info, err := p.Info()
		if err != nil || info.Name != name {
			p.Close()
			continue
		}
		found = append(found, attached{prog: p, tag: info.Tag})
	}
	return found, nil
}

func closeAll(as []attached) {
	for _, a := range as {
		a.prog.Close()
	}
}

// attachTCX puts prog in front of tcx ingress of ifindex.
func attachTCX(ifindex int, name string, prog *ebpf.Program) error {
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress, Anchor: link.Head(),
	})
	if err != nil {
		return fmt.Errorf("attaching %s to tcx ingress of interface %d: %w", name, ifindex, err)
	}
	return nil
}

func detach(ifindex int, prog *ebpf.Program) error {
	err := link.RawDetachProgram(link.RawDetachProgramOptions{
		Target: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress,
	})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detaching program from tcx ingress of interface %d: %w", ifindex, err)
	}
	return nil
}

// uninstall detaches every program of ours named name from ifindex.
func uninstall(ifindex int, name string) error {
	have, err := ours(ifindex, name)
	if err != nil {
		return err
	}
	defer closeAll(have)
	for _, a := range have {
		if err := detach(ifindex, a.prog); err != nil {
			return err
		}
	}
	return nil
}

// syncLocalAddrs makes the local_addrs map of the outbound program hold exactly addrs.
func syncLocalAddrs(prog *ebpf.Program, addrs []netip.Addr) error {
	m, err := programMap(prog, "local_addrs")
	if err != nil {
		return err
	}
	defer m.Close()
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

// setEgress stores the interface through which send_out (outbound.c) sends packets of
// connections opened before enrolment.
func setEgress(prog *ebpf.Program, ifindex int) error {
	m, err := programMap(prog, "config")
	if err != nil {
		return err
	}
	defer m.Close()
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
