package redirecttest

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// snapshot describes everything a backend could install in the pod: nftables and iptables
// rulesets, ip rules, routes of every table, qdiscs and tc filters, tcx programs on the pod
// link, and the per-netns sysctls a backend might set.
func snapshot(t *testing.T, e *env) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"nft", "list", "ruleset"},
		{"ip", "-4", "rule", "show"},
		{"ip", "-6", "rule", "show"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"tc", "qdisc", "show"},
		{"tc", "filter", "show", "dev", PodLink, "ingress"},
		{"tc", "filter", "show", "dev", PodLink, "egress"},
		{"sysctl", "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.all.rp_filter",
			"net.ipv4.conf.lo.rp_filter", "net.ipv4.conf." + PodLink + ".rp_filter", "net.ipv4.ip_forward"},
	} {
		out, err := e.pod.run(args...)
		if err != nil {
			out = "error: " + err.Error()
		}
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), out)
	}
	// tcx attachments are not shown by tc.
	e.pod.h.Do(func() error {
		ifc, err := net.InterfaceByName(PodLink)
		if err != nil {
			fmt.Fprintf(&b, "tcx: %v\n", err)
			return nil
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			fmt.Fprintf(&b, "tcx %s: %s\n", at, queryPrograms(ifc.Index, at))
		}
		return nil
	})
	return b.String()
}

func queryPrograms(target int, at ebpf.AttachType) string {
	r, err := link.QueryPrograms(link.QueryOptions{Target: target, Attach: at})
	if err != nil {
		return "error: " + err.Error()
	}
	ids := make([]string, 0, len(r.Programs))
	for _, p := range r.Programs {
		ids = append(ids, fmt.Sprint(p.ID))
	}
	return fmt.Sprintf("%d programs %v", len(ids), ids)
}
