package bpf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/after"
	"github.com/ambit-mesh/ambit/internal/netns"
)

// ErrNotSupported is wrapped by New's error when the kernel lacks something the redirection
// needs (TC programs, bpf_sk_assign, socket lookups from TC, sk_lookup); the caller then
// uses nftables.
var ErrNotSupported = errors.New("ebpf redirection not supported by this kernel")

// Options configure a Redirector.
type Options struct {
	// PinDir is a directory on a bpffs for the per-pod sk_lookup links; "" means
	// DefaultPinDir. It must be the same directory across restarts of the agent.
	PinDir string
}

// Program names as the kernel reports them (at most 15 characters).
const (
	progInbound  = "ambit_inbound"
	progOutbound = "ambit_outbound"
	progLookup   = "ambit_sk_lookup"
)

// Maps the programs of one pod share; the outbound program's are the originals.
var sharedMaps = []string{"local_addrs", "zt_listeners", "recycle"}

// Redirector installs and removes the eBPF redirection in pod network namespaces. It holds no
// state of its own: everything lives in the namespaces and under Options.PinDir, so a new
// Redirector (after an agent restart) picks up what an old one installed. (From New on it
// keeps one set of programs loaded ahead, attached nowhere.) Safe for concurrent use on
// different network namespaces.
type Redirector struct {
	pinDir string
	specs  map[string]*ebpf.CollectionSpec // by program name
	tags   map[string]string               // kernel tag of each program, by name

	// spare holds a pod's set of programs and maps loaded ahead of time, so that an Attach
	// does not wait for the verifier (5 ms, BenchmarkLoadSet); refilling is set while the
	// next one loads.
	spare     chan *progSet
	refilling *atomic.Bool
}

// New checks that the kernel supports the redirection and prepares the programs; the first
// pod's set starts loading in the background. Its errors wrap ErrNotSupported when the
// kernel or the machine lacks something needed.
func New(opts Options) (*Redirector, error) {
	if err := probe(); err != nil {
		return nil, err
	}
	r := &Redirector{
		pinDir: opts.PinDir, specs: map[string]*ebpf.CollectionSpec{}, tags: map[string]string{},
		spare: make(chan *progSet, 1), refilling: new(atomic.Bool),
	}
	if r.pinDir == "" {
		r.pinDir = DefaultPinDir
	}
	if err := checkPinDir(r.pinDir); err != nil {
		return nil, err
	}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		progInbound: loadInbound, progOutbound: loadOutbound, progLookup: loadSkLookup,
	} {
		cs, err := load()
		if err != nil {
			return nil, fmt.Errorf("reading program %s: %w", name, err)
		}
		dropSockmapBTF(cs)
		r.specs[name] = cs
		if r.tags[name], err = tag(cs, name); err != nil {
			return nil, err
		}
	}
	// Else the first Attach (the first pod after an agent restart) would load its own:
	// one of the slowest ADDs of the node.
	r.refill()
	return r, nil
}

// dropSockmapBTF removes the key and value types of cs's sockmaps. The kernel refuses BTF
// for them; cilium/ebpf then creates the map again without, but the refused map is freed
// inside the syscall after an RCU grace period, which made every pod's first map cost about
// 30 ms of its CNI ADD.
func dropSockmapBTF(cs *ebpf.CollectionSpec) {
	for _, m := range cs.Maps {
		if m.Type == ebpf.SockMap || m.Type == ebpf.SockHash {
			m.Key, m.Value = nil, nil
		}
	}
}

// probe reports missing kernel features as errors wrapping ErrNotSupported.
func probe() error {
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("loading a TC program: %w (needs CAP_BPF and CAP_NET_ADMIN)", err)
		}
		return notSupported("TC programs", err)
	}
	for _, h := range []asm.BuiltinFunc{asm.FnSkAssign, asm.FnSkcLookupTcp, asm.FnSkLookupUdp, asm.FnL4CsumReplace, asm.FnRedirectNeigh} {
		if err := features.HaveProgramHelper(ebpf.SchedCLS, h); err != nil {
			return notSupported(fmt.Sprintf("helper %s in TC programs", h), err)
		}
	}
	if err := features.HaveProgramType(ebpf.SkLookup); err != nil {
		return notSupported("sk_lookup programs", err)
	}
	if err := features.HaveMapType(ebpf.SockMap); err != nil {
		return notSupported("sockmaps", err)
	}
	return nil
}

func notSupported(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrNotSupported, what, err)
}

// Attach installs the redirection in the network namespace at netnsPath, whose own addresses
// (besides those found on its interfaces) are podIPs. It reconciles: running it again on a
// namespace that has the current programs and rules changes nothing, and it replaces programs
// of another Ambit version without a gap in the capture.
func (r *Redirector) Attach(ctx context.Context, netnsPath string, podIPs []netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := netns.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("attaching redirection: %w", err)
	}
	defer h.Close()
	err = h.Do(func() error {
		nh, err := newNetlink()
		if err != nil {
			return err
		}
		defer nh.Close()
		return r.attach(nh, podIPs)
	})
	// Only now, with this pod's programs in place: loading the next set while attaching
	// doubled Attach's time on two cores (BenchmarkEnroll: 3.1 ms, 1.7 ms without). During
	// a CNI ADD, only once the agent has answered.
	after.Reply(ctx, r.refill)
	if err != nil {
		return fmt.Errorf("attaching redirection in %s: %w", netnsPath, err)
	}
	return nil
}

// newNetlink opens the netlink socket that Attach, Detach and Installed send all their
// requests through, in the calling thread's netns: one socket instead of one per request.
func newNetlink() (*netlink.Handle, error) {
	nh, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	return nh, nil
}

func (r *Redirector) attach(nh *netlink.Handle, podIPs []netip.Addr) error {
	lo, others, err := links(nh)
	if err != nil {
		return err
	}
	addrs, src, err := localAddrs(nh, podIPs)
	if err != nil {
		return err
	}
	ino, err := netnsInode()
	if err != nil {
		return err
	}
	egress := egressLink(nh, others)
	if out := r.current(nh, lo, others, ino); out != nil {
		defer out.Close()
		if err := refreshMaps(out, addrs, egress); err != nil {
			return err
		}
		for _, ifc := range others {
			if err := setSrcValidMark(ifc.name, true); err != nil {
				return err
			}
		}
		return ensureRouting(nh, lo, src)
	}

	// Something is missing or of another version: install a fresh set, each new program in
	// front of the one it replaces, then remove the old ones, so the capture has no gap.
	set, err := r.takeSet()
	if err != nil {
		return err
	}
	defer set.close()
	if err := syncLocalAddrs(set.localAddrs, addrs); err != nil {
		return err
	}
	if err := setEgress(set.config, egress); err != nil {
		return err
	}
	// Outbound first: it must know the local addresses before the routes send it traffic.
	if err := replaceFilter(nh, lo, progOutbound, set.out); err != nil {
		return err
	}
	for _, ifc := range others {
		if err := setSrcValidMark(ifc.name, true); err != nil {
			return err
		}
		if err := replaceFilter(nh, ifc.index, progInbound, set.in); err != nil {
			return err
		}
	}
	if err := r.ensureLookup(ino, set.lookup); err != nil {
		return err
	}
	// The rules last: they need the inbound programs' marks (see inbound.c).
	return ensureRouting(nh, lo, src)
}

// replaceFilter makes prog our filter on ifindex, then removes the other filters of ours
// called name there (a filter of ours elsewhere in the chain is of another version).
func replaceFilter(nh *netlink.Handle, ifindex int, name string, prog *ebpf.Program) error {
	old, err := ours(nh, ifindex, name)
	if err != nil {
		return err
	}
	defer closeAll(old)
	if err := attachFilter(nh, ifindex, name, prog); err != nil {
		return err
	}
	for _, a := range old {
		if a.filter.Priority == filterPrio && a.filter.Handle == filterHandle {
			continue // replaced in place
		}
		if err := detach(nh, a); err != nil {
			return err
		}
	}
	return nil
}

// current returns the attached outbound program if the netns has exactly the current
// programs, one per attach point, all sharing one set of maps; nil otherwise.
func (r *Redirector) current(nh *netlink.Handle, lo int, others []iface, ino uint64) *ebpf.Program {
	one := func(ifindex int, name string) *ebpf.Program {
		have, err := ours(nh, ifindex, name)
		if err != nil || len(have) != 1 || have[0].tag != r.tags[name] {
			closeAll(have)
			return nil
		}
		return have[0].prog
	}
	out := one(lo, progOutbound)
	if out == nil {
		return nil
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
		}
	}()
	shared := programMapID(out, "zt_listeners")
	if shared == 0 {
		return nil
	}
	for _, ifc := range others {
		in := one(ifc.index, progInbound)
		if in == nil {
			return nil
		}
		same := programMapID(in, "zt_listeners") == shared
		in.Close()
		if !same {
			return nil
		}
	}
	l, lp, err := r.pinnedLookup(ino)
	if err != nil || l == nil {
		return nil
	}
	l.Close()
	defer lp.Close()
	if programTag(lp) != r.tags[progLookup] || programMapID(lp, "zt_listeners") != shared {
		return nil
	}
	ok = true
	return out
}

// progSet is one pod's programs, sharing the outbound program's maps, and the two maps
// Attach writes (so it need not look them up through the program).
type progSet struct {
	out, in, lookup    *ebpf.Program
	localAddrs, config *ebpf.Map
}

func (s *progSet) close() {
	for _, p := range []*ebpf.Program{s.out, s.in, s.lookup} {
		if p != nil {
			p.Close()
		}
	}
	for _, m := range []*ebpf.Map{s.localAddrs, s.config} {
		if m != nil {
			m.Close()
		}
	}
}

// takeSet returns the spare set if one is ready, else loads one. Attach has the next spare
// loaded in the background once it is done.
func (r *Redirector) takeSet() (*progSet, error) {
	select {
	case s := <-r.spare:
		return s, nil
	default:
		return r.loadSet()
	}
}

// refill loads a spare set in the background, unless one is ready or loading. A failure
// leaves none: the next takeSet loads in line and reports the error.
func (r *Redirector) refill() {
	if len(r.spare) > 0 || !r.refilling.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer r.refilling.Store(false)
		s, err := r.loadSet()
		if err != nil {
			return
		}
		select {
		case r.spare <- s:
		default:
			s.close()
		}
	}()
}

// loadSet loads a fresh set: the three programs sharing one set of maps.
func (r *Redirector) loadSet() (*progSet, error) {
	outColl, err := newCollection(r.specs[progOutbound], nil)
	if err != nil {
		return nil, err
	}
	defer outColl.Close()
	shared := map[string]*ebpf.Map{}
	for _, name := range sharedMaps {
		shared[name] = outColl.Maps[name]
	}
	inColl, err := newCollection(r.specs[progInbound], shared)
	if err != nil {
		return nil, err
	}
	defer inColl.Close()
	lookupColl, err := newCollection(r.specs[progLookup], shared)
	if err != nil {
		return nil, err
	}
	defer lookupColl.Close()
	return &progSet{
		out:        outColl.DetachProgram(progOutbound),
		in:         inColl.DetachProgram(progInbound),
		lookup:     lookupColl.DetachProgram(progLookup),
		localAddrs: outColl.DetachMap("local_addrs"),
		config:     outColl.DetachMap("config"),
	}, nil
}

func newCollection(cs *ebpf.CollectionSpec, replace map[string]*ebpf.Map) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(cs.Copy(), ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading programs: %w: %w", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("loading programs: %w", err)
	}
	return coll, nil
}

// tag loads program name of cs (which also proves the verifier takes it) and returns the tag
// the kernel gives it, to recognise the same program attached in a netns later.
func tag(cs *ebpf.CollectionSpec, name string) (string, error) {
	p, err := loadProgram(cs, name)
	if err != nil {
		return "", err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", fmt.Errorf("reading info of program %s: %w", name, err)
	}
	return info.Tag, nil
}

// loadProgram loads program name of cs with fresh maps; the program holds the maps.
func loadProgram(cs *ebpf.CollectionSpec, name string) (*ebpf.Program, error) {
	coll, err := newCollection(cs, nil)
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}

// Detach removes everything Attach installed in the namespace at netnsPath. A namespace that
// no longer exists, or has nothing of ours, is not an error.
func (r *Redirector) Detach(ctx context.Context, netnsPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := netns.Open(netnsPath)
	if errors.Is(err, fs.ErrNotExist) {
		// The kernel freed the programs with the namespace's interfaces; only a pin can be left.
		return r.gc()
	}
	if err != nil {
		return fmt.Errorf("detaching redirection: %w", err)
	}
	defer h.Close()
	err = h.Do(func() error {
		nh, err := newNetlink()
		if err != nil {
			return err
		}
		defer nh.Close()
		lo, others, err := links(nh)
		if err != nil {
			return err
		}
		// Routing first: with the rules gone, outbound traffic no longer goes to lo.
		if err := removeRouting(nh); err != nil {
			return err
		}
		if err := uninstall(nh, lo, progOutbound); err != nil {
			return err
		}
		for _, ifc := range others {
			if err := uninstall(nh, ifc.index, progInbound); err != nil {
				return err
			}
			if err := setSrcValidMark(ifc.name, false); err != nil {
				return err
			}
		}
		ino, err := netnsInode()
		if err != nil {
			return err
		}
		return r.removeLookup(ino)
	})
	if err != nil {
		return fmt.Errorf("detaching redirection in %s: %w", netnsPath, err)
	}
	return r.gc()
}

// Installed lists what of ours is in the namespace at netnsPath, one line per program, rule
// or route; empty after Detach.
func (r *Redirector) Installed(ctx context.Context, netnsPath string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := netns.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("listing redirection: %w", err)
	}
	defer h.Close()
	var out []string
	err = h.Do(func() error {
		nh, err := newNetlink()
		if err != nil {
			return err
		}
		defer nh.Close()
		all, err := nh.LinkList()
		if err != nil {
			return fmt.Errorf("listing interfaces: %w", err)
		}
		for _, l := range all {
			for _, name := range []string{progInbound, progOutbound} {
				have, err := ours(nh, l.Attrs().Index, name)
				if err != nil {
					return err
				}
				for _, a := range have {
					info, _ := a.prog.Info()
					id, _ := info.ID()
					out = append(out, fmt.Sprintf("tc ingress %s: program %s id %d", l.Attrs().Name, name, id))
				}
				closeAll(have)
			}
		}
		for _, l := range all {
			if on, err := srcValidMark(l.Attrs().Name); err == nil && on {
				out = append(out, "sysctl net.ipv4.conf."+l.Attrs().Name+".src_valid_mark = 1")
			}
		}
		ino, err := netnsInode()
		if err != nil {
			return err
		}
		if l, p, err := r.pinnedLookup(ino); err == nil && l != nil {
			info, _ := p.Info()
			id, _ := info.ID()
			out = append(out, fmt.Sprintf("sk_lookup: program %s id %d, link pinned at %s", progLookup, id, r.lookupPinPath(ino)))
			l.Close()
			p.Close()
		} else if _, err := os.Stat(filepath.Dir(r.lookupPinPath(ino))); err == nil {
			out = append(out, "pin directory "+filepath.Dir(r.lookupPinPath(ino)))
		}
		rules, err := ourRules(nh)
		if err != nil {
			return err
		}
		for _, r := range rules {
			out = append(out, "rule "+r.String())
		}
		routes, err := ourRoutes(nh)
		if err != nil {
			return err
		}
		for _, r := range routes {
			out = append(out, "route "+r.String())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing redirection in %s: %w", netnsPath, err)
	}
	return out, nil
}

// iface is one of the namespace's interfaces.
type iface struct {
	index int
	name  string
}

// links returns lo's index and the namespace's other interfaces.
func links(nh *netlink.Handle) (lo int, others []iface, err error) {
	all, err := nh.LinkList()
	if err != nil {
		return 0, nil, fmt.Errorf("listing interfaces: %w", err)
	}
	for _, l := range all {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			lo = a.Index
			continue
		}
		others = append(others, iface{a.Index, a.Name})
	}
	if lo == 0 {
		return 0, nil, errors.New("listing interfaces: the namespace has no loopback interface")
	}
	return lo, others, nil
}

// egressLink returns the interface of the main table's IPv4 default route, else the first
// interface that is not lo, else 0.
func egressLink(nh *netlink.Handle, others []iface) int {
	routes, err := nh.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err == nil {
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
				return r.LinkIndex
			}
		}
	}
	if len(others) > 0 {
		return others[0].index
	}
	return 0
}

// localAddrs returns the namespace's IPv4 addresses plus podIPs, and the source address for
// captured outbound connections: the first IPv4 pod IP, else the first global IPv4 address.
func localAddrs(nh *netlink.Handle, podIPs []netip.Addr) (addrs []netip.Addr, src netip.Addr, err error) {
	list, err := nh.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("listing addresses: %w", err)
	}
	for _, ip := range podIPs {
		if ip = ip.Unmap(); ip.Is4() {
			addrs = append(addrs, ip)
		}
	}
	if len(addrs) > 0 {
		src = addrs[0]
	}
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		addrs = append(addrs, ip)
		if !src.IsValid() && ip.IsGlobalUnicast() {
			src = ip
		}
	}
	if !src.IsValid() {
		return nil, netip.Addr{}, errors.New("choosing source address: the pod has no IPv4 address (IPv6-only pods are not captured yet)")
	}
	return addrs, src, nil
}

// setSrcValidMark sets net.ipv4.conf.NAME.src_valid_mark in the current netns, so the
// reverse-path check of packets arriving on the interface uses their mark (see inbound.c).
// Detach sets it back to the kernel's default, 0.
func setSrcValidMark(name string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	if err := os.WriteFile(srcValidMarkPath(name), []byte(v), 0o644); err != nil {
		return fmt.Errorf("setting src_valid_mark of %s: %w", name, err)
	}
	return nil
}

func srcValidMark(name string) (bool, error) {
	b, err := os.ReadFile(srcValidMarkPath(name))
	if err != nil {
		return false, fmt.Errorf("reading src_valid_mark of %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// srcValidMarkPath is the sysctl's file; /proc/sys/net shows the calling thread's netns.
func srcValidMarkPath(name string) string {
	return "/proc/sys/net/ipv4/conf/" + name + "/src_valid_mark"
}
