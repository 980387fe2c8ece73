/* Programs the loader's kernel tests use to prove real events reach Python: drops in one chosen network
 * namespace are counted and sent through a ring buffer. Nothing here changes any packet. */
#include "skb.h"

char LICENSE[] SEC("license") = "GPL";

struct selftest_event {
	__u32 netns;
	__u32 reason;
	__u64 location;
	__u16 protocol;
	__u16 pad[3];
};

/* slot 0: the netns inode to watch (0 = nothing) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} want_netns SEC(".maps");

/* drops seen in that namespace, per reason */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} drops_by_reason SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} scratch_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

SEC("tp_btf/kfree_skb")
int BPF_PROG(selftest_drops, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	__u32 zero = 0;
	__u32 *want = bpf_map_lookup_elem(&want_netns, &zero);
	if (!want || !*want)
		return 0;
	__u32 ns = skb_netns(skb);
	if (ns != *want)
		return 0;
	__u32 r = reason;
	__u64 one = 1, *n = bpf_map_lookup_elem(&drops_by_reason, &r);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&drops_by_reason, &r, &one, BPF_NOEXIST);
	struct selftest_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->netns = ns;
	e->reason = r;
	e->location = (__u64)location;
	e->protocol = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
