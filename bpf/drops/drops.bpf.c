/* `dnattrace drops`: count every freed-because-dropped skb in the kernel, keyed by where (the caller of
 * kfree_skb_reason), why (enum skb_drop_reason), which network namespace and which protocol.
 *
 * No per-packet event crosses to user space: counts live in a per-CPU hash, and user space reads the
 * cumulative counts each interval and takes differences. Keys are never deleted while running, so
 * nothing is lost between a read and a clear. When the hash is full, the drop is still counted in
 * `overflow`, which user space reports.
 *
 * Two entry points share one counting function: tp_btf/kfree_skb (typed arguments) and, where the kernel
 * refuses that, the classic tracepoint skb/kfree_skb. */
#include "skb.h"
#include "drops.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

/* per-CPU counts of drops: DROPS_STAT_* (drops.h) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROPS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drops_config);
} drops_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&drops_stats, &slot);
	if (v)
		*v += 1;   /* per-CPU slot: no other CPU writes it */
}

/* Whether the skb's conntrack entry was created for `port` (host order) in its original direction:
 * after DNAT rewrote 8080 to 80, the dropped packet still belongs to --port 8080. */
static __always_inline int ct_has_port(struct sk_buff *skb, __u16 port)
{
	unsigned long nfct = BPF_CORE_READ(skb, _nfct);
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);   /* NFCT_PTRMASK */
	if (!ct)
		return 0;
	__u16 sport = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u.all);
	__u16 dport = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u.all);
	return bpf_ntohs(sport) == port || bpf_ntohs(dport) == port;
}

static __always_inline void count_drop(void *ctx, struct sk_buff *skb, __u64 location, __u32 reason)
{
	__u32 zero = 0;
	struct drops_config *cfg = bpf_map_lookup_elem(&drops_cfg, &zero);
	if (!cfg)
		return;
	__u8 flags = cfg->flags;

	struct drop_key key = {};
	key.location = location;
	key.reason = reason;
	key.stack_id = -1;
	key.netns = skb_netns(skb);
	if ((flags & FLAG_NETNS) && key.netns != cfg->netns)
		return;
	key.l3proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));

	struct l34 h;
	if (skb_l34(skb, &h) == 0)
		key.l4proto = h.proto;
	if (cfg->l4proto && key.l4proto != cfg->l4proto)
		return;
	if (flags & FLAG_PORT) {
		__u16 port = cfg->port;
		if (bpf_ntohs(h.sport) != port && bpf_ntohs(h.dport) != port && !ct_has_port(skb, port))
			return;
		key.port = port;
	}
	if (flags & FLAG_STACKS) {
		long id = bpf_get_stackid(ctx, &stacks, 0);
		key.stack_id = id < 0 ? -1 : (__s32)id;
	}

	bump(DROPS_STAT_COUNTED);
	if (count_one_drop(&drops, &key))
		bump(DROPS_STAT_OVERFLOW);
}

/* The kernel also passes rx_sk (6.10+); only the first three arguments are read, so older kernels with
 * (skb, location, reason) load the same program. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(drops_btf, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	count_drop(ctx, skb, (__u64)location, (__u32)reason);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int drops_tp(struct trace_event_raw_kfree_skb *args)
{
	__u32 reason = 0;
	if (bpf_core_field_exists(args->reason))
		reason = args->reason;
	count_drop(args, (struct sk_buff *)args->skbaddr, (__u64)args->location, reason);
	return 0;
}
