package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The policy routing that steers outbound traffic to lo. Rules at prefs prefFirst..prefLast
// with protocol rtprotAmbit, and routes in routeTable with rtprotAmbit, are ours.
const (
	prefFirst   = 32750
	prefLast    = prefFirst + 4
	routeTable  = 101
	rtprotAmbit = 203
	ztunnelMark = 0x539
	markMask    = 0xfff
	probeAddr   = "169.254.7.127"
)

// wantRules are the rules, in order. The local table (pref 0) has already matched every local
// destination, so only traffic to other hosts reaches them.
func wantRules() []*netlink.Rule {
	mask := uint32(markMask)
	rule := func(pref int) *netlink.Rule {
		r := netlink.NewRule()
		r.Family = unix.AF_INET
		r.Priority = pref
		r.Protocol = rtprotAmbit
		return r
	}
	// ztunnel's own sockets and replies to kubelet probes skip the capture rules.
	marked := rule(prefFirst)
	marked.Mark, marked.Mask, marked.Goto = ztunnelMark, &mask, prefLast
	probe := rule(prefFirst + 1)
	probe.Dst = &net.IPNet{IP: net.ParseIP(probeAddr).To4(), Mask: net.CIDRMask(32, 32)}
	probe.Goto = prefLast
	tcp := rule(prefFirst + 2)
	tcp.IPProto, tcp.Table = unix.IPPROTO_TCP, routeTable
	dns := rule(prefFirst + 3)
	dns.IPProto, dns.Dport, dns.Table = unix.IPPROTO_UDP, netlink.NewRulePortRange(53, 53), routeTable
	// The goto target; a rule that does nothing.
	nop := rule(prefLast)
	nop.Type = unix.FR_ACT_NOP
	return []*netlink.Rule{marked, probe, tcp, dns, nop}
}

// ruleKey is what makes two rules the same for reconciling. The kernel does not report a nop
// rule's action back, so the action is not part of it.
func ruleKey(r *netlink.Rule) string {
	var mask uint32
	if r.Mask != nil {
		mask = *r.Mask
	}
	dst, dport := "", ""
	if r.Dst != nil {
		dst = r.Dst.String()
	}
	if r.Dport != nil {
		dport = fmt.Sprintf("%d-%d", r.Dport.Start, r.Dport.End)
	}
	goTo, table := max(r.Goto, 0), r.Table
	if goTo != 0 {
		table = 0
	}
	return fmt.Sprintf("pref=%d mark=%#x/%#x dst=%s dport=%s ipproto=%d goto=%d table=%d",
		r.Priority, r.Mark, mask, dst, dport, r.IPProto, goTo, table)
}

func ourRules(nh *netlink.Handle) ([]netlink.Rule, error) {
	all, err := nh.RuleList(unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	var ours []netlink.Rule
	for _, r := range all {
		if r.Protocol == rtprotAmbit && r.Priority >= prefFirst && r.Priority <= prefLast {
			ours = append(ours, r)
		}
	}
	return ours, nil
}

// wantRoute is table routeTable's one route. A local route's source address would otherwise
// be the destination itself; src makes the app's captured connections come from the pod IP.
func wantRoute(lo int, src netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: lo,
		Src:       net.IP(src.AsSlice()),
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table:     routeTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  rtprotAmbit,
	}
}

func ourRoutes(nh *netlink.Handle) ([]netlink.Route, error) {
	routes, err := nh.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: routeTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes of table %d: %w", routeTable, err)
	}
	return slices.DeleteFunc(routes, func(r netlink.Route) bool { return r.Protocol != rtprotAmbit }), nil
}

// ensureRouting installs the route, then the rules (the route first, so no rule points at an
// empty table). Rules already right are kept, so reconciling opens no gap in the capture.
func ensureRouting(nh *netlink.Handle, lo int, src netip.Addr) error {
	if err := nh.RouteReplace(wantRoute(lo, src)); err != nil {
		return fmt.Errorf("adding local route to table %d: %w", routeTable, err)
	}
	have, err := ourRules(nh)
	if err != nil {
		return err
	}
	haveKeys := map[string]bool{}
	for i := range have {
		haveKeys[ruleKey(&have[i])] = true
	}
	want := wantRules()
	wantKeys := map[string]bool{}
	// The goto target goes in first: a goto to a missing pref would be skipped.
	for _, r := range slices.Backward(want) {
		k := ruleKey(r)
		wantKeys[k] = true
		if haveKeys[k] {
			continue
		}
		if err := nh.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding rule %d: %w", r.Priority, err)
		}
	}
	for i := range have {
		if !wantKeys[ruleKey(&have[i])] {
			if err := nh.RuleDel(&have[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("deleting stale rule %d: %w", have[i].Priority, err)
			}
		}
	}
	return nil
}

// removeRouting deletes our rules (the capture ones first) and routes.
func removeRouting(nh *netlink.Handle) error {
	have, err := ourRules(nh)
	if err != nil {
		return err
	}
	for i := range have {
		if err := nh.RuleDel(&have[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting rule %d: %w", have[i].Priority, err)
		}
	}
	routes, err := ourRoutes(nh)
	if err != nil {
		return err
	}
	for i := range routes {
		if err := nh.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("deleting route of table %d: %w", routeTable, err)
		}
	}
	return nil
}
