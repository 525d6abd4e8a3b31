//go:build ignore

/* Outbound capture: a tc ingress filter on lo of the pod's netns. The policy routes installed with
 * this program send the app's TCP and its DNS queries to a non-local address through lo (the
 * route keeps the packet's destination); here a new TCP connection is handed to ztunnel's
 * outbound listener on 15001 (15053 for TCP port 53) and a UDP DNS query to ztunnel's DNS
 * socket on 15053, remembering the query's destination so ztunnel's answer can be given back
 * the address the app asked. Packets of connections that sockets here own pass (the app's
 * replies to ztunnel's spoofed inbound connections among them), and packets of connections
 * opened before enrolment go back out of the pod. */

#include "common.h"

/* config[0] is set by the loader. */
struct config {
	__u32 egress_ifindex; /* the interface of the main table's default route */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct endpoint {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* dns_origin maps the app's UDP socket (address, port) to the destination of its last DNS
 * query, for rewriting the source of ztunnel's answer. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint);
	__type(value, struct endpoint);
} dns_origin SEC(".maps");

/* restore_dns_source rewrites the source of ztunnel's UDP DNS answer to the address the app's
 * query was sent to, as the app's (usually connected) socket expects. */
static __always_inline int restore_dns_source(struct __sk_buff *skb, struct pkt *p)
{
	struct endpoint app = {.addr = p->tuple.daddr, .port = p->tuple.dport};
	struct endpoint *orig = bpf_map_lookup_elem(&dns_origin, &app);
	if (!orig)
		return TC_ACT_UNSPEC;
	struct endpoint o = *orig;
	__u32 ip_check = p->l3 + __builtin_offsetof(struct iphdr, check);
	__u32 ip_saddr = p->l3 + __builtin_offsetof(struct iphdr, saddr);
	__u32 udp_check = p->l4 + __builtin_offsetof(struct udphdr, check);
	__u32 udp_sport = p->l4 + __builtin_offsetof(struct udphdr, source);

	if (bpf_l4_csum_replace(skb, udp_check, p->tuple.saddr, o.addr, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4) ||
	    bpf_l4_csum_replace(skb, udp_check, p->tuple.sport, o.port, BPF_F_MARK_MANGLED_0 | 2) ||
	    bpf_l3_csum_replace(skb, ip_check, p->tuple.saddr, o.addr, 4) ||
	    bpf_skb_store_bytes(skb, ip_saddr, &o.addr, 4, 0) ||
	    bpf_skb_store_bytes(skb, udp_sport, &o.port, 2, 0))
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

static __always_inline int capture_dns_udp(struct __sk_buff *skb, struct pkt *p)
{
	struct endpoint app = {.addr = p->tuple.saddr, .port = p->tuple.sport};
	struct endpoint orig = {.addr = p->tuple.daddr, .port = p->tuple.dport};
	struct sock_tuple4 lt = p->tuple;

	lt.dport = bpf_htons(PORT_DNS);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &lt, sizeof(lt), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT;
	bpf_map_update_elem(&dns_origin, &app, &orig, BPF_ANY);
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/* send_out puts a packet of a connection that no socket here owns (one the app opened before
 * enrolment) back on its way out of the pod: marked like ztunnel's packets, the route lookup
 * of bpf_redirect_neigh skips the capture rules. */
static __always_inline int send_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	if (!c || !c->egress_ifindex)
		return TC_ACT_SHOT;
	set_ztunnel_mark(skb);
	return bpf_redirect_neigh(c->egress_ifindex, 0, 0, 0);
}

SEC("tc")
int ambit_outbound(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (!parse(skb, &p))
		return TC_ACT_UNSPEC;
	if (ztunnel_marked(skb)) {
		if (p.proto == IPPROTO_UDP && p.tuple.sport == bpf_htons(PORT_DNS))
			return restore_dns_source(skb, &p);
		return TC_ACT_UNSPEC;
	}
	if (is_local(p.tuple.daddr))
		return TC_ACT_UNSPEC;
	if (p.proto == IPPROTO_UDP) {
		if (p.tuple.dport == bpf_htons(PORT_DNS_ORIG))
			return capture_dns_udp(skb, &p);
		return TC_ACT_UNSPEC;
	}
	enum owner o = owner(skb, &p);
	if (o == OWNER_SOCKET)
		return TC_ACT_UNSPEC;
	if (!is_syn(&p))
		return send_out(skb);
	if (p.tuple.dport == bpf_htons(PORT_DNS_ORIG))
		return capture_tcp(skb, &p, o, PORT_DNS, LISTENER_DNS);
	return capture_tcp(skb, &p, o, PORT_OUTBOUND, LISTENER_OUTBOUND);
}

char __license[] SEC("license") = "Dual MIT/GPL";
