/* Tiny programs that `dnattrace doctor` loads and attaches one at a time to learn, by trying, which
 * attach types this kernel allows. They only count hits; none changes anything. */
#include "skb.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline void hit(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&hits, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(probe_tp_btf, struct sk_buff *skb)
{
	hit(0);
	return 0;
}

SEC("raw_tp/kfree_skb")
int probe_raw_tp(void *ctx)
{
	hit(1);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int probe_tracepoint(void *ctx)
{
	hit(2);
	return 0;
}

SEC("fentry/ip_rcv")
int BPF_PROG(probe_fentry, struct sk_buff *skb)
{
	hit(3);
	return 0;
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(probe_fexit, struct sk_buff *skb, struct nf_hook_state *state, void *e, unsigned int s, int ret)
{
	hit(4);
	return 0;
}

SEC("kprobe/ip_rcv")
int probe_kprobe(void *ctx)
{
	hit(5);
	return 0;
}

/* libbpf 1.1 does not know SEC("netfilter"): the loader sets the program type by hand. */
SEC("netfilter")
int probe_netfilter(struct bpf_nf_ctx *ctx)
{
	hit(6);
	return 1; /* NF_ACCEPT: observing never changes a verdict */
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(probe_fib, u32 table, const struct flowi4 *flp)
{
	hit(7);
	return 0;
}

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(probe_fib6, const struct net *net, const struct fib6_result *res)
{
	hit(9);
	return 0;
}

/* Direct loads of packet bytes through bpf_rdonly_cast(ptr, 0) (see ip_l4_at in skb.h). */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(probe_direct_read, struct sk_buff *skb)
{
	struct ip_l4 copy;
	const struct ip_l4 *h = ip_l4_at(&copy, skb->data, 1);
	if (h && h->ip.version == 4)
		hit(8);
	return 0;
}
