//go:build ignore

/* Inbound capture: a tc ingress filter on every interface of the pod's netns except lo. New TCP
 * connections to any port but 15008 go to ztunnel's inbound listener on 15006; 15008 goes to
 * ztunnel's HBONE listener as addressed. Packets of connections a socket already owns pass, and
 * so does everything from the kubelet probe address.
 *
 * Every IPv4 packet from outside also gets ztunnel's mark. The reverse-path check of its
 * source address is a route lookup that matches the capture rules (they select on protocol and
 * port, and that lookup carries the packet's, swapped); with src_valid_mark set on the
 * interface the lookup carries this mark instead, which the rules send to the main table. */

#include "common.h"

SEC("tc")
int ambit_inbound(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (skb->protocol == bpf_htons(ETH_P_IP))
		set_ztunnel_mark(skb);
	if (!parse(skb, &p) || p.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	if (p.tuple.saddr == bpf_htonl(PROBE_ADDR) || p.tuple.dport == bpf_htons(PORT_HBONE))
		return TC_ACT_UNSPEC;
	enum owner o = owner(skb, &p);
	if (o == OWNER_SOCKET)
		return TC_ACT_UNSPEC;
	return capture_tcp(skb, &p, o, PORT_INBOUND, LISTENER_INBOUND);
}

char __license[] SEC("license") = "Dual MIT/GPL";
