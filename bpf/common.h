/* Shared definitions of Ambit's eBPF programs: the few kernel UAPI types and helper
 * declarations they use (kept here instead of vmlinux.h or libbpf's headers so that generating
 * the objects needs nothing but clang), the data-plane contract's constants, and packet parsing.
 * Header-only; every program includes it. */
#pragma once

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef __u16 __be16;
typedef __u32 __be32;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* Byte order: the programs are built for little-endian BPF only (bpf2go -target bpfel). */
#define bpf_htons(x) ((__be16)__builtin_bswap16(x))
#define bpf_htonl(x) ((__be32)__builtin_bswap32(x))

/* struct __sk_buff, up to the fields used (include/uapi/linux/bpf.h; the layout is ABI). */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
};

/* struct bpf_sock (UAPI), complete: the verifier checks accesses against its real layout. */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__be16 dst_port;
	__u16 : 16;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

/* struct bpf_sk_lookup (UAPI), complete. */
struct bpf_sk_lookup {
	union {
		struct bpf_sock *sk;
		__u64 cookie;
	};
	__u32 family;
	__u32 protocol;
	__u32 remote_ip4;
	__u32 remote_ip6[4];
	__be16 remote_port;
	__u16 : 16;
	__u32 local_ip4;
	__u32 local_ip6[4];
	__u32 local_port; /* host byte order */
	__u32 ingress_ifindex;
};

/* The IPv4 half of struct bpf_sock_tuple: lookups pass sizeof(struct sock_tuple4). */
struct sock_tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_SOCKMAP = 15,
};

#define BPF_ANY 0
#define BPF_F_CURRENT_NETNS (-1L)
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#define BPF_TCP_TIME_WAIT 6
#define SK_DROP 0
#define SK_PASS 1
#define AF_INET 2
#define BPF_TCP_LISTEN 10

/* TC verdicts of a direct-action cls_bpf program: UNSPEC lets the next filter decide, OK
 * ends classification and lets the packet on, SHOT drops it. */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

/* Helpers, by their stable numbers in enum bpf_func_id. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset, const void *from, __u32 len, __u64 flags) = (void *)9;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to, __u64 size) = (void *)10;
static long (*bpf_l4_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to, __u64 flags) = (void *)11;
static struct bpf_sock *(*bpf_sk_lookup_udp)(void *ctx, struct sock_tuple4 *tuple, __u32 tuple_size, __u64 netns, __u64 flags) = (void *)85;
static long (*bpf_sk_release)(void *sock) = (void *)86;
static struct bpf_sock *(*bpf_skc_lookup_tcp)(void *ctx, struct sock_tuple4 *tuple, __u32 tuple_size, __u64 netns, __u64 flags) = (void *)99;
static long (*bpf_sk_assign)(void *ctx, void *sk, __u64 flags) = (void *)124;
static long (*bpf_redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) = (void *)152;

/* The data-plane contract (DESIGN.md section 3). */
#define ZTUNNEL_MARK 0x539
#define ZTUNNEL_MARK_MASK 0xfff
#define PORT_OUTBOUND 15001
#define PORT_INBOUND 15006
#define PORT_HBONE 15008
#define PORT_DNS 15053
#define PORT_DNS_ORIG 53
#define PROBE_ADDR 0xa9fe077f /* 169.254.7.127, the node's SNAT address for kubelet probes */

/* Keys of zt_listeners. */
#define LISTENER_INBOUND 0
#define LISTENER_OUTBOUND 1
#define LISTENER_DNS 2

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Maps shared by all programs of one pod (the loader creates them once and hands them to
 * each program; every object carries the definitions so that each can be loaded alone). */

/* local_addrs holds the netns's own IPv4 addresses (the loader fills it): traffic to them,
 * like traffic to 127.0.0.0/8, is loopback traffic and is never captured. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* zt_listeners holds ztunnel's listeners, put there by the TC programs for
 * ambit_sk_lookup (the kernel drops a socket from it when it closes). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} zt_listeners SEC(".maps");

/* recycle holds the SYNs (by their addresses as received) that reuse the addresses of a
 * time-wait socket, with the key of the ztunnel listener they are for; see recycle_to. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct sock_tuple4);
	__type(value, __u32);
} recycle SEC(".maps");

static __always_inline int is_local(__be32 addr)
{
	if ((addr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000))
		return 1;
	return bpf_map_lookup_elem(&local_addrs, &addr) != 0;
}

struct iphdr {
	__u8 ihl_version; /* little-endian bitfield order: ihl in the low nibble */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
	__be16 window;
	__u16 check;
	__be16 urg_ptr;
};

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

/* pkt is the parsed IPv4 packet the programs decide on. */
struct pkt {
	struct sock_tuple4 tuple; /* as received: saddr = sender */
	__u8 proto;
	__u8 tcp_flags; /* TCP only */
	__u32 l3; /* offset of the IP header */
	__u32 l4; /* offset of the TCP or UDP header */
};

/* parse fills p from an IPv4 TCP or UDP packet that starts with an Ethernet header (as on
 * both eth0 and lo at TC) and carries its L4 header (not a later fragment). It returns 0 for
 * any other packet, which the programs leave alone. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end)
		return 0;
	if ((ip->ihl_version >> 4) != 4 || (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	__u32 ihl = (ip->ihl_version & 0xf) * 4;
	if (ihl < sizeof(*ip))
		return 0;
	/* Both L4 headers start with the two ports. */
	__be16 *ports = (void *)ip + ihl;
	if ((void *)(ports + 2) > end)
		return 0;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)ports;
		if ((void *)(th + 1) > end)
			return 0;
		p->tcp_flags = th->flags;
	} else if (ip->protocol != IPPROTO_UDP) {
		return 0;
	}
	p->proto = ip->protocol;
	p->tuple.saddr = ip->saddr;
	p->tuple.daddr = ip->daddr;
	p->tuple.sport = ports[0];
	p->tuple.dport = ports[1];
	p->l3 = ETH_HLEN;
	p->l4 = ETH_HLEN + ihl;
	return 1;
}

static __always_inline int is_syn(struct pkt *p)
{
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void set_ztunnel_mark(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~ZTUNNEL_MARK_MASK) | ZTUNNEL_MARK;
}

static __always_inline int ztunnel_marked(struct __sk_buff *skb)
{
	return (skb->mark & ZTUNNEL_MARK_MASK) == ZTUNNEL_MARK;
}

enum owner {
	OWNER_NONE,      /* no socket, or a listener: a new connection, to capture */
	OWNER_SOCKET,    /* a connection some socket here has: deliver as usual */
	OWNER_TIME_WAIT, /* a SYN reusing the addresses of a time-wait socket */
};

/* owner tells whether a TCP packet belongs to a connection some socket of this netns already
 * has (request, established or time-wait), which the stack delivers as usual. */
static __always_inline enum owner owner(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &p->tuple, sizeof(p->tuple), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return OWNER_NONE;
	__u32 state = sk->state;
	bpf_sk_release(sk);
	if (state == BPF_TCP_LISTEN)
		return OWNER_NONE;
	if (state == BPF_TCP_TIME_WAIT && is_syn(p))
		return OWNER_TIME_WAIT;
	return OWNER_SOCKET;
}

/* ztunnel_listener finds ztunnel's TCP listener on port in this netns, by address: ztunnel
 * opens its listeners after enrolment, so no loader could have put them in a map. */
static __always_inline struct bpf_sock *ztunnel_listener(struct __sk_buff *skb, struct sock_tuple4 *t, __u16 port)
{
	struct sock_tuple4 lt = *t;
	lt.dport = bpf_htons(port);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &lt, sizeof(lt), BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return 0;
	}
	return sk;
}

/* assign_tcp hands the packet to ztunnel's TCP listener on port. The packet keeps its
 * addresses, so the accepted socket's local address is the original destination. Without a
 * listener the packet is dropped: the client retransmits its SYN and succeeds once ztunnel
 * listens, and nothing reaches the app uncaptured. */
static __always_inline int assign_tcp(struct __sk_buff *skb, struct sock_tuple4 *t, __u16 port)
{
	struct bpf_sock *sk = ztunnel_listener(skb, t, port);
	if (!sk)
		return TC_ACT_SHOT;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/* recycle_to handles a SYN that reuses the addresses of a time-wait socket. Assigned to a
 * listener it would be dropped as a duplicate of that socket; left alone, the kernel recycles
 * the time-wait socket by looking up a listener for the original port, the app's, and the new
 * connection would escape the capture. So it is left alone, and flagged: the kernel's listener
 * lookup runs ambit_sk_lookup, which picks ztunnel's listener (stored here under key) for
 * flagged SYNs only. */
static __always_inline int recycle_to(struct __sk_buff *skb, struct sock_tuple4 *t, __u16 port, __u32 key)
{
	struct bpf_sock *sk = ztunnel_listener(skb, t, port);
	if (!sk)
		return TC_ACT_SHOT;
	struct bpf_sock *known = bpf_map_lookup_elem(&zt_listeners, &key);
	long err = 0;
	if (known)
		bpf_sk_release(known);
	else
		err = bpf_map_update_elem(&zt_listeners, &key, sk, BPF_ANY);
	bpf_sk_release(sk);
	if (err || bpf_map_update_elem(&recycle, t, &key, BPF_ANY))
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

/* capture_tcp sends a TCP packet that no socket here owns to ztunnel's listener on port. */
static __always_inline int capture_tcp(struct __sk_buff *skb, struct pkt *p, enum owner o, __u16 port, __u32 key)
{
	if (o == OWNER_TIME_WAIT)
		return recycle_to(skb, &p->tuple, port, key);
	return assign_tcp(skb, &p->tuple, port);
}
