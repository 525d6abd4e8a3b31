package redirect

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) the nftables backend owns in a pod netns.
const TableName = "ambit"

// chainSpec is one chain of the pod ruleset; rule is one rule with its nft syntax (what the
// golden file and humans read) and the expressions sent to the kernel.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	rules    []rule
}

type rule struct {
	text  string
	exprs []expr.Any
}

// podRuleset is the capture inside one pod netns, Istio's in-pod semantics with REDIRECT:
//
//   - every redirect is a NAT in the nat hooks, so only a connection's first packet is
//     examined, and ztunnel reads the destination back with SO_ORIGINAL_DST;
//   - ztunnel's own sockets carry ZtunnelMark and are never redirected;
//   - ztunnel's spoofed inbound connections (from a client address the pod does not own,
//     over lo) get ConnMark, which the output route hook copies to the app's replies so the ip
//     rule sends them to RouteTable (local 0.0.0.0/0 dev lo) and back to ztunnel's socket;
//   - traffic over lo (loopback, the pod talking to itself) and from/to ProbeSource is left alone.
//
// REDIRECT rather than TPROXY: outbound capture of local processes needs NAT anyway (TPROXY
// only works in prerouting), one mechanism keeps the rules short, and ztunnel's listeners
// then need IP_TRANSPARENT only for the spoofed inbound sockets.
func podRuleset() []chainSpec {
	mangle := nftables.ChainPriorityMangle
	dstnat := nftables.ChainPriorityNATDest
	return []chainSpec{
		{
			name: "prerouting-mark", typ: nftables.ChainTypeFilter,
			hook: nftables.ChainHookPrerouting, priority: mangle,
			rules: []rule{
				{
					fmt.Sprintf(`iifname "lo" meta mark & %#x == %#x ct mark set %#x`, MarkMask, ZtunnelMark, ConnMark),
					concat(iifname("lo"), metaMarkIs(ZtunnelMark), ctMarkSet(ConnMark)),
				},
			},
		},
		{
			name: "output-route", typ: nftables.ChainTypeRoute,
			hook: nftables.ChainHookOutput, priority: mangle,
			rules: []rule{
				{
					fmt.Sprintf(`meta mark & %#x != %#x ct mark & %#x == %#x meta mark set %#x`, MarkMask, ZtunnelMark, MarkMask, ConnMark, ConnMark),
					concat(metaMarkIsNot(ZtunnelMark), ctMarkIs(ConnMark), metaMarkSet(ConnMark)),
				},
			},
		},
		{
			name: "prerouting", typ: nftables.ChainTypeNAT,
			hook: nftables.ChainHookPrerouting, priority: dstnat,
			rules: []rule{
				{`iifname "lo" accept`, concat(iifname("lo"), accept())},
				{fmt.Sprintf("meta mark & %#x == %#x accept", MarkMask, ZtunnelMark), concat(metaMarkIs(ZtunnelMark), accept())},
				{"ip saddr " + ProbeSource.String() + " accept", concat(ipAddr(12, ProbeSource), accept())},
				{fmt.Sprintf("tcp dport %d accept", HBONEPort), concat(l4proto(unix.IPPROTO_TCP), dport(HBONEPort), accept())},
				{fmt.Sprintf("meta l4proto tcp redirect to :%d", InboundPort), concat(l4proto(unix.IPPROTO_TCP), redirectTo(InboundPort))},
			},
		},
		{
			name: "output", typ: nftables.ChainTypeNAT,
			hook: nftables.ChainHookOutput, priority: dstnat,
			rules: []rule{
				{fmt.Sprintf("meta mark & %#x == %#x accept", MarkMask, ZtunnelMark), concat(metaMarkIs(ZtunnelMark), accept())},
				{fmt.Sprintf("ct mark & %#x == %#x accept", MarkMask, ConnMark), concat(ctMarkIs(ConnMark), accept())},
				{"ip daddr " + ProbeSource.String() + " accept", concat(ipAddr(16, ProbeSource), accept())},
				{`oifname "lo" accept`, concat(oifname("lo"), accept())},
				{fmt.Sprintf("udp dport 53 redirect to :%d", DNSPort), concat(l4proto(unix.IPPROTO_UDP), dport(53), redirectTo(DNSPort))},
				{fmt.Sprintf("tcp dport 53 redirect to :%d", DNSPort), concat(l4proto(unix.IPPROTO_TCP), dport(53), redirectTo(DNSPort))},
				{fmt.Sprintf("meta l4proto tcp redirect to :%d", OutboundPort), concat(l4proto(unix.IPPROTO_TCP), redirectTo(OutboundPort))},
			},
		},
	}
}

// renderRuleset writes the ruleset as text: nft syntax per rule followed by the exact
// expressions, so a golden file pins both what is meant and what is sent.
func renderRuleset(chains []chainSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n", TableName)
	for _, c := range chains {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype %s hook %s priority %d;\n", c.name, c.typ, hookName(*c.hook), int32(*c.priority))
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text)
			for _, e := range r.exprs {
				fmt.Fprintf(&b, "\t\t\t# %T %+v\n", e, e)
			}
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookOutput:
		return "output"
	default:
		return fmt.Sprint(uint32(h))
	}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

func oifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

func masked(mark uint32, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
	}
}

func metaMarkIs(mark uint32) []expr.Any {
	return concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}}, masked(mark, expr.CmpOpEq))
}

func metaMarkIsNot(mark uint32) []expr.Any {
	return concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}}, masked(mark, expr.CmpOpNeq))
}

func ctMarkIs(mark uint32) []expr.Any {
	return concat([]expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}}, masked(mark, expr.CmpOpEq))
}

func ctMarkSet(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

func metaMarkSet(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// ipAddr matches the IPv4 source (offset 12) or destination (offset 16) address.
func ipAddr(offset uint32, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// dport matches the TCP or UDP destination port (both at offset 2 of the transport header).
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// RenderPodRuleset returns the nftables backend's pod ruleset as deterministic text, for
// golden-file tests and debugging.
func RenderPodRuleset() string { return renderRuleset(podRuleset()) }
