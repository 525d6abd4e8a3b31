//go:build ignore

/* Listener selection for recycled time-wait addresses: sk_lookup on the pod's netns. The
 * kernel runs it whenever it looks for a TCP listener itself. It acts only on the SYNs the TC
 * programs flagged in recycle (see recycle_to in common.h), picking ztunnel's listener for
 * them; every other lookup, including the TC programs' own socket lookups, passes. */

#include "common.h"

SEC("sk_lookup")
int ambit_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct sock_tuple4 t = {
		.saddr = ctx->remote_ip4,
		.daddr = ctx->local_ip4,
		.sport = ctx->remote_port,
		.dport = bpf_htons(ctx->local_port),
	};
	__u32 *flagged = bpf_map_lookup_elem(&recycle, &t);
	if (!flagged)
		return SK_PASS;
	__u32 key = *flagged;
	bpf_map_delete_elem(&recycle, &t);
	struct bpf_sock *sk = bpf_map_lookup_elem(&zt_listeners, &key);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
