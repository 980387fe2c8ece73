/* The packets being followed: `tracked` (skb address -> the identity of the packet followed in it),
 * the per-CPU memory of the last skb found not followed, the active_until deadline that lets the
 * every-packet probes stop looking while nothing is followed, and the packet this CPU is routing.
 * follow() is where a packet that matches the filter starts being followed. */
#ifndef DNATTRACE_WATCH_FOLLOW_H
#define DNATTRACE_WATCH_FOLLOW_H

#include "skb.h"
#include "watch.h"
#include "filter.h"

/* skb address -> identity of the packet followed in it; removed when the skb is freed or consumed.
 * Some paths free an skb without a tracepoint (TCP frees most received segments with __kfree_skb), and
 * the memory is soon reused for another packet: the identity (IP id, TCP seq/ack, which NAT does not
 * change) tells the followed packet from a stranger in a recycled skb. */
struct followed {
	__u64 ident;
	__u32 sig;       /* addresses and ports at the last event emitted: NAT rewrites change it */
	__u8 ctinfo;     /* conntrack state at the last event emitted */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct followed);
} tracked SEC(".maps");

/* Until when (in jiffies) the transmit/free probes and the netfilter links past a packet's first point
 * must look at packets: every packet newly followed pushes it ACTIVE_JIFFIES ahead. These probes run
 * for every packet in the system; while nothing was followed lately they cost one load of jiffies.
 * A deadline rather than a count of followed skbs: TCP frees most received segments with __kfree_skb,
 * which fires no tracepoint, so a count would never come back down. Jiffies, because tracing programs
 * may not read the coarse clock and the precise one costs more; 10000 jiffies are 10-100 s (HZ 1000-100).
 * A followed packet still in flight when the deadline passes loses its end: user space reports it as
 * unknown. */
#define ACTIVE_JIFFIES 10000ULL

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} active_until SEC(".maps");

static __always_inline int none_followed(void)
{
	__u32 zero = 0;
	__u64 *until = bpf_map_lookup_elem(&active_until, &zero);
	return until && bpf_jiffies64() > *until;
}

static __always_inline void mark_active(void)
{
	__u32 zero = 0;
	__u64 *until = bpf_map_lookup_elem(&active_until, &zero);
	if (until)
		*until = bpf_jiffies64() + ACTIVE_JIFFIES;
}

/* A packet passes a run of points on one CPU (receive, each netfilter position, transmit): the last
 * skb this CPU found not followed is remembered, so the next points skip the hash lookup. The answer
 * holds only while nothing new was followed anywhere (track_gen unchanged): a newly followed skb may
 * be the one remembered. Only "not followed" is remembered; "followed" is always looked up. */
struct not_followed {
	__u64 skb;
	__u64 gen;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct not_followed);
} last_miss SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} track_gen SEC(".maps");

/* The skb's entry in `tracked`, without checking which packet it now holds (same_packet does: the
 * points that must read the headers first look the entry up once, then check it). */
static __always_inline struct followed *tracked_entry(__u64 skb)
{
	__u32 zero = 0;
	struct not_followed *miss = bpf_map_lookup_elem(&last_miss, &zero);
	__u64 *gen = bpf_map_lookup_elem(&track_gen, &zero);
	if (miss && gen && miss->skb == skb && miss->gen == *gen)
		return NULL;
	struct followed *t = bpf_map_lookup_elem(&tracked, &skb);
	if (!t && miss && gen) {
		miss->skb = skb;
		miss->gen = *gen;
	}
	return t;
}

static __always_inline void track(__u64 skb, struct followed *f)
{
	bpf_map_update_elem(&tracked, &skb, f, BPF_NOEXIST);
	/* after the insert: a miss remembered before it carries the old generation */
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&track_gen, &zero);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	mark_active();
}

static __always_inline void untrack(__u64 skb)
{
	bpf_map_delete_elem(&tracked, &skb);
}

static __always_inline __u64 ident(struct l34 *p)
{
	return ((__u64)p->seq << 32 | p->ack) ^ ((__u64)p->ipid << 16 | p->udp_len) ^ 1;
}

/* The followed packet this CPU is routing: set when PREROUTING ends, so the fib lookup that follows on
 * the same CPU (softirq, no preemption) can be tied to it. */
struct routing {
	__u64 skb;
	__u32 daddr[4];
	__u32 saddr[4];
	__u8 family;
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct routing);
} cur SEC(".maps");

/* Is the skb followed, and still carrying the packet it was followed for? Forgets a recycled skb. */
static __always_inline struct followed *same_packet(__u64 skb, struct followed *t, struct l34 *p)
{
	if (t->ident == ident(p))
		return t;
	untrack(skb);
	return NULL;
}

static __always_inline struct followed *is_tracked(__u64 skb, struct l34 *p)
{
	struct followed *t = tracked_entry(skb);
	return t ? same_packet(skb, t, p) : NULL;
}

/* The followed packet's entry, or NULL; starts following it when it matches the filter (*fresh = 1:
 * a new journey starts here). */
static __always_inline struct followed *follow(__u64 skb, struct l34 *p, int *fresh)
{
	*fresh = 0;
	if (!kind_followed(p))
		return NULL;
	struct followed *t = is_tracked(skb, p);
	if (t || !wanted(p, skb))
		return t;
	struct followed nt = { .ident = ident(p), .sig = 0, .ctinfo = 0xfe };
	track(skb, &nt);
	*fresh = 1;
	return bpf_map_lookup_elem(&tracked, &skb);
}

static __always_inline __u32 sig(struct l34 *p)
{
	__u32 s = p->saddr[0] ^ p->saddr[1] ^ p->saddr[2] ^ p->saddr[3];
	__u32 d = p->daddr[0] ^ p->daddr[1] ^ p->daddr[2] ^ p->daddr[3];
	return s ^ (d * 2654435761u) ^ ((__u32)p->sport << 16 | p->dport);
}

/* The points that see an skb after its first (transmit, route result): is it followed, and does it
 * still hold that packet? Reads its headers into *p only when it is followed. */
static __always_inline struct followed *followed_skb(struct sk_buff *skb, struct l34 *p)
{
	struct followed *t = tracked_entry((__u64)skb);
	if (!t)
		return NULL;
	skb_l34(skb, p);
	return same_packet((__u64)skb, t, p);
}

#endif
