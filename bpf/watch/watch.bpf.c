/* dnattrace watch: follow the packets of chosen flows through the kernel, point by point.
 *
 * A packet is followed when its (proto, port, address) matches the filter map on either side, or when
 * its skb address is already in `tracked` (so it stays followed after NAT rewrites its addresses and
 * across veth pairs, where the skb itself moves to the peer). Every program only observes: netfilter
 * programs return NF_ACCEPT, tracing programs return 0. Which of the alternative programs get loaded
 * (tp_btf / raw_tp / tracepoint, netfilter links / fexit / kprobe) is decided in user space by probing.
 */
#include "skb.h"
#include "watch.h"
#include "config.h"
#include "emit.h"
#include "filter.h"
#include "follow.h"
#include "stash.h"

char LICENSE[] SEC("license") = "GPL";

#define NF_ACCEPT 1

/* ---- device receive ---- */

/* trusted: skb is a BTF pointer (tp_btf), so SKB_FIELD reads its fields with plain loads; else with
 * bpf_probe_read (raw_tp, classic tracepoint). direct: the packet's headers too (ip_l4_at). Every packet
 * on the machine passes here, so the header read is most of this probe's cost while nothing is followed
 * (scripts/bench watch --profile). */
static __always_inline int on_rx(struct sk_buff *skb, const int trusted, const int direct)
{
	__be16 l3proto = SKB_FIELD(trusted, skb, protocol);
	unsigned char *l3 = SKB_FIELD(trusted, skb, data);
	struct l34 p = {};
	if (!maybe(l3proto, l3, &p, direct))
		return 0;
	int fresh;
	if (!follow((__u64)skb, &p, &fresh))
		return 0;
	struct dt_event *e = emit(DT_RX | (fresh ? DT_NEW : 0), (__u64)skb, &p, l3);
	if (!e)
		return 0;
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	e->netns = dev_netns(dev);
	e->ifindex = BPF_CORE_READ(dev, ifindex);
	dev_name(e->ifname, dev);
	submit(e);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(rx_direct, struct sk_buff *skb)
{
	return on_rx(skb, 1, 1);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(rx_btf, struct sk_buff *skb)
{
	return on_rx(skb, 1, 0);
}

SEC("raw_tp/netif_receive_skb")
int BPF_PROG(rx_raw, struct sk_buff *skb)
{
	return on_rx(skb, 0, 0);
}

SEC("tracepoint/net/netif_receive_skb")
int rx_tp(struct trace_event_raw_net_dev_template *ctx)
{
	return on_rx((struct sk_buff *)ctx->skbaddr, 0, 0);
}

/* ---- netfilter hooks (BPF netfilter links; one program per position inside a hook) ---- */

/* where each chain bracket program is linked: (netns, hook, slot, family) -> priority */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dt_bracket);
	__type(value, __s32);
} brackets SEC(".maps");

/* Whether a packet is followed is decided where it is first seen: the receive probe, or here at
 * OUTPUT's first position for a packet made in this namespace. Every other position only asks whether
 * this skb is followed (one lookup), so the packets of a busy watched port that were turned away cost
 * them no header read, no filter lookup and no admission lookup. The followed packet's entry, or NULL;
 * *p holds its headers, *fresh says a new journey starts here. */
static __always_inline struct followed *nf_followed(struct sk_buff *skb, __u8 hook, __u8 stage, unsigned char *l3,
						    struct l34 *p, int *fresh, const int direct)
{
	struct followed *t;
	__be16 l3proto = skb->protocol;
	if (hook == NF_INET_LOCAL_OUT && stage == DT_STAGE_FIRST) {
		if (!maybe(l3proto, l3, p, direct))
			return NULL;
		return follow((__u64)skb, p, fresh);
	}
	if (none_followed() || !(t = tracked_entry((__u64)skb)) || !maybe(l3proto, l3, p, direct))
		return NULL;
	return same_packet((__u64)skb, t, p);
}

/* PREROUTING's end names the packet this CPU routes next (on_fib ties the fib lookup to it); INPUT's and
 * FORWARD's start mean the routing is over. */
static __always_inline void nf_routing(struct sk_buff *skb, __u8 hook, __u8 stage, struct l34 *p)
{
	__u32 zero = 0;
	if (hook == NF_INET_PRE_ROUTING && stage == DT_STAGE_LAST) {
		struct routing r = { .skb = (__u64)skb, .family = p->family };
		__builtin_memcpy(r.daddr, p->daddr, sizeof(r.daddr));
		__builtin_memcpy(r.saddr, p->saddr, sizeof(r.saddr));
		bpf_map_update_elem(&cur, &zero, &r, BPF_ANY);
	} else if ((hook == NF_INET_LOCAL_IN || hook == NF_INET_FORWARD) && stage == DT_STAGE_FIRST) {
		struct routing r = {};
		bpf_map_update_elem(&cur, &zero, &r, BPF_ANY);
	}
}

/* Inside a hook, only what changed is news: a NAT rewrite or a new conntrack state. A hook's first and
 * last positions, its chain brackets (which chains the packet got past) and a new journey always are. Remembers what this event shows in t. */
static __always_inline int nf_news(struct followed *t, struct sk_buff *skb, struct l34 *p, __u8 stage, int fresh)
{
	unsigned long nfct = skb->_nfct;
	__u8 ctinfo = (nfct & ~7UL) ? (nfct & 7) : DT_NO_CT;
	__u32 sg = sig(p);
	if (!fresh && stage != DT_STAGE_FIRST && stage != DT_STAGE_LAST && stage < DT_STAGE_CHAIN &&
	    t->sig == sg && t->ctinfo == ctinfo)
		return 0;
	t->sig = sg;
	t->ctinfo = ctinfo;
	return 1;
}

/* Where the hook runs: its namespace, the device the packet came in on (else the one it leaves by),
 * the device it leaves by, and the packet's conntrack entry. The callers read `in` and `out` their own
 * way: a netfilter link's state is a trusted pointer (plain loads), a kprobe's is not (BPF_CORE_READ). */
static __always_inline void hook_where(struct dt_event *e, const struct nf_hook_state *state, struct sk_buff *skb,
				       struct net_device *in, struct net_device *out, __u8 hook, __u8 stage)
{
	e->hook = hook;
	e->stage = stage;
	e->netns = BPF_CORE_READ(state, net, ns.inum);
	struct net_device *dev = in ? in : out;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		dev_name(e->ifname, dev);
	}
	dev_name(e->out_ifname, out);
	fill_ct(e, skb);
}

static __always_inline void nf_fill(struct dt_event *e, const struct nf_hook_state *state, struct sk_buff *skb,
				    __u8 hook, __u8 stage)
{
	hook_where(e, state, skb, state->in, state->out, hook, stage);
}

static __always_inline int on_nf(struct bpf_nf_ctx *ctx, __u8 stage, const int direct)
{
	struct sk_buff *skb = ctx->skb;
	/* the same programs are linked for NFPROTO_IPV4 and NFPROTO_IPV6; maybe() tells the two apart */
	const struct nf_hook_state *state = ctx->state;
	__u8 hook = state->hook;
	unsigned char *l3 = skb->head + skb->network_header;
	struct l34 p = {};
	int fresh = 0;
	struct followed *t = nf_followed(skb, hook, stage, l3, &p, &fresh, direct);
	if (!t)
		return NF_ACCEPT;
	nf_routing(skb, hook, stage, &p);
	if (!nf_news(t, skb, &p, stage, fresh))
		return NF_ACCEPT;
	struct dt_event *e = emit(DT_NF | (fresh ? DT_NEW : 0), (__u64)skb, &p, l3);
	if (!e)
		return NF_ACCEPT;
	nf_fill(e, state, skb, hook, stage);
	if (stage >= DT_STAGE_CHAIN) {
		struct dt_bracket k = { .netns = e->netns, .hook = hook, .slot = stage - DT_STAGE_CHAIN,
					.family = p.family };
		__s32 *prio = bpf_map_lookup_elem(&brackets, &k);
		e->priority = prio ? *prio : 0;
	}
	submit(e);
	return NF_ACCEPT;
}

/* libbpf 1.1 does not know SEC("netfilter"): user space sets the program type before loading. Only the
 * first position reads the headers of packets not followed (OUTPUT's decision), so only it has a
 * direct-read twin. */
SEC("netfilter")
int nf_first_direct(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_FIRST, 1); }
SEC("netfilter")
int nf_first(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_FIRST, 0); }
SEC("netfilter")
int nf_conntrack(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_CONNTRACK, 0); }
SEC("netfilter")
int nf_dnat(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_DNAT, 0); }
SEC("netfilter")
int nf_snat(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_SNAT, 0); }
SEC("netfilter")
int nf_last(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_LAST, 0); }

/* Chain brackets: linked at the priorities where the namespace's base chains run (every table, family and
 * backend), so a journey says which chains a packet got past and the chain group that dropped it. */
#define NF_CHAIN(n) \
	SEC("netfilter") \
	int nf_chain##n(struct bpf_nf_ctx *ctx) { return on_nf(ctx, DT_STAGE_CHAIN + n, 0); }
NF_CHAIN(0)
NF_CHAIN(1)
NF_CHAIN(2)
NF_CHAIN(3)
NF_CHAIN(4)
NF_CHAIN(5)

/* ---- netfilter hooks where links are missing: fentry/fexit (else kprobe/kretprobe) on nf_hook_slow ----
 *
 * nf_hook_slow runs once per hook a packet passes (in namespaces with hooks registered there): its
 * `state` names the hook, the family, the devices and the namespace. The entry is the hook's first
 * position (the tuple before any rewrite), the return its last (after DNAT/SNAT) or its verdict. It runs
 * for every packet of every flow, so "not followed" is decided first with the cheapest test there is
 * (the deadline, then the tracked lookup with its per-CPU miss memory); only OUTPUT reads the headers of
 * packets not followed (a packet made in this namespace is first seen there, as with the links). */

#define NFPROTO_IPV4_ 2
#define NFPROTO_IPV6_ 10

/* The hook's devices and namespace, read through BPF_CORE_READ (kprobe's state is not a BTF pointer). */
static __always_inline void hook_fill(struct dt_event *e, const struct nf_hook_state *state, struct sk_buff *skb,
				      __u8 hook, __u8 stage)
{
	hook_where(e, state, skb, BPF_CORE_READ(state, in), BPF_CORE_READ(state, out), hook, stage);
}

/* Entry: the followed packet enters a hook. Returns 1 when the call was recorded in hook_calls.
 * trusted: state is a BTF pointer (fentry), read with plain loads until the packet is known followed. */
static __always_inline int hook_enter(struct sk_buff *skb, const struct nf_hook_state *state, const int trusted)
{
	__u64 key = (__u64)skb;
	struct followed *t = none_followed() ? NULL : tracked_entry(key);
	__u8 hook = trusted ? state->hook : BPF_CORE_READ(state, hook);   /* fentry: a plain load */
	if (!t && hook != NF_INET_LOCAL_OUT)
		return 0;
	/* state->pf says the family: the same code follows IPv4 and IPv6 (ARP and bridge hooks are not) */
	__u8 pf = BPF_CORE_READ(state, pf);
	__be16 l3proto = BPF_CORE_READ(skb, protocol);
	if (!(pf == NFPROTO_IPV4_ && l3proto == ETH_P_IP_BE) && !(pf == NFPROTO_IPV6_ && l3proto == ETH_P_IPV6_BE))
		return 0;
	unsigned char *l3 = skb_l3(skb);
	struct l34 p = {};
	int fresh = 0;
	if (t) {
		if (l34_at(l3proto, l3, &p) || !(t = same_packet(key, t, &p)))
			return 0;
	} else if (!maybe(l3proto, l3, &p, 0) || !(t = follow(key, &p, &fresh))) {
		return 0;
	}
	nf_routing(skb, hook, DT_STAGE_FIRST, &p);
	t->sig = sig(&p);
	unsigned long nfct = BPF_CORE_READ(skb, _nfct);
	t->ctinfo = (nfct & ~7UL) ? (nfct & 7) : DT_NO_CT;
	struct hook_call c = { .state = (__u64)state, .netns = BPF_CORE_READ(state, net, ns.inum), .hook = hook };
	struct dt_event *e = emit(DT_NF | (fresh ? DT_NEW : 0), key, &p, l3);
	if (e) {
		c.ts = e->ts;
		hook_fill(e, state, skb, hook, DT_STAGE_FIRST);
		submit(e);
	} else {
		c.ts = bpf_ktime_get_ns();
	}
	bpf_map_update_elem(&hook_calls, &key, &c, BPF_ANY);
	return 1;
}

/* Return: ACCEPT (1) is the hook's last position, with the packet as the hook left it; anything else
 * is the verdict (a drop: the skb is already freed, so nothing of it is read; 0: stolen or queued). */
static __always_inline void hook_return(struct sk_buff *skb, int ret)
{
	__u64 key = (__u64)skb;
	if (ret == 1 && !tracked_entry(key))
		return;     /* the usual case: the entry just remembered this skb as not followed */
	struct hook_call *cp = bpf_map_lookup_elem(&hook_calls, &key);
	if (!cp)
		return;
	struct hook_call c = *cp;
	bpf_map_delete_elem(&hook_calls, &key);
	struct l34 p = {};
	if (ret != 1) {
		struct dt_event *e = emit(DT_VERDICT, key, &p, NULL);
		if (!e)
			return;
		e->ts = c.ts + 1;
		e->hook = c.hook;
		e->netns = c.netns;
		e->reason = (__u32)ret;
		submit(e);
		return;
	}
	if (!followed_skb(skb, &p))
		return;
	const struct nf_hook_state *state = (const struct nf_hook_state *)c.state;
	nf_routing(skb, c.hook, DT_STAGE_LAST, &p);
	struct dt_event *e = emit(DT_NF, key, &p, skb_l3(skb));
	if (!e)
		return;
	hook_fill(e, state, skb, c.hook, DT_STAGE_LAST);
	submit(e);
}

SEC("fentry/nf_hook_slow")
int BPF_PROG(hook_fentry, struct sk_buff *skb, struct nf_hook_state *state)
{
	hook_enter(skb, state, 1);
	return 0;
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(hook_fexit, struct sk_buff *skb, struct nf_hook_state *state, void *entries, unsigned int s, int ret)
{
	hook_return(skb, ret);
	return 0;
}

/* The kprobe fallback: the return probe has no arguments, so the entry stashes the skb per execution
 * context (a hook entered inside another on the same context, e.g. a RST sent from INPUT, overwrites
 * it: that inner call's return is then not seen). */
SEC("kprobe/nf_hook_slow")
int BPF_KPROBE(hook_kprobe, struct sk_buff *skb, struct nf_hook_state *state)
{
	if (hook_enter(skb, state, 0)) {
		struct stash_key k;
		stash_key(&k, STASH_HOOK);
		struct entry_args a = { .skb = (__u64)skb };
		bpf_map_update_elem(&entries, &k, &a, BPF_ANY);
	}
	return 0;
}

SEC("kretprobe/nf_hook_slow")
int BPF_KRETPROBE(hook_kretprobe, int ret)
{
	if (none_followed())
		return 0;
	struct entry_args a;
	if (unstash(&a, STASH_HOOK))
		hook_return((struct sk_buff *)a.skb, ret);
	return 0;
}

/* ---- route decision: the fib lookup made for the packet this CPU is routing ---- */

/* The route decision for the packet this CPU routes: the lookup's flow (p), whether it was the reverse
 * path check, the table, the error and the next hop chosen (IPv4's fib_nh_common, IPv6's inside its
 * fib6_nh), with its gateway of either family. */
static __always_inline void route_event(__u64 skb, struct l34 *p, __u8 reverse, __u32 table, int err,
					const struct fib_nh_common *nhc)
{
	struct dt_event *e = emit(DT_ROUTE, skb, p, NULL);
	if (!e)
		return;
	e->stage = reverse;
	e->priority = table;
	e->reason = (__u32)err;
	if (nhc) {
		struct net_device *dev = BPF_CORE_READ(nhc, nhc_dev);
		e->netns = dev_netns(dev);
		e->ifindex = BPF_CORE_READ(nhc, nhc_oif);
		dev_name(e->out_ifname, dev);
		__u8 gw_family = BPF_CORE_READ(nhc, nhc_gw_family);
		if (gw_family == 2 /* AF_INET */)
			e->gateway[0] = BPF_CORE_READ(nhc, nhc_gw.ipv4);
		else if (gw_family == 10 /* AF_INET6 */)
			BPF_CORE_READ_INTO(&e->gateway, nhc, nhc_gw.ipv6);
	}
	submit(e);
}

static __always_inline int on_fib(__u32 table, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
{
	__u32 zero = 0;
	struct routing *r = bpf_map_lookup_elem(&cur, &zero);
	if (!r || !r->skb)
		return 0;
	__u32 daddr = BPF_CORE_READ(flp, daddr);
	__u8 reverse;
	if (r->family != DT_V4)
		return 0;
	if (daddr == r->daddr[0])
		reverse = 0;
	else if (daddr == r->saddr[0])
		reverse = 1;    /* fib_validate_source: the reverse-path check */
	else
		return 0;
	struct l34 p = { .family = DT_V4 };
	p.saddr[0] = BPF_CORE_READ(flp, saddr);
	p.daddr[0] = daddr;
	p.proto = BPF_CORE_READ(flp, __fl_common.flowic_proto);
	route_event(r->skb, &p, reverse, table, err, nhc);
	return 0;
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(fib_btf, u32 table, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
{
	return on_fib(table, flp, nhc, err);
}

SEC("raw_tp/fib_table_lookup")
int BPF_PROG(fib_raw, u32 table, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
{
	return on_fib(table, flp, nhc, err);
}

/* IPv6's route decision: fib6_table_lookup fires once per table the lookup tries (with the default rules
 * the local table, then main). A miss in the local table is not a decision (every forwarded packet has
 * one) and is left out; a miss in another table is kept (policy routing shows as such). The error is the kernel's own mapping of the result's type
 * (ip6_rt_type_to_error in the fib6 tracepoint). */
static __always_inline int rt6_type_error(__u8 type)
{
	switch (type) {
	case 6: return -22;     /* RTN_BLACKHOLE: -EINVAL */
	case 7: return -113;    /* RTN_UNREACHABLE: -EHOSTUNREACH (also the null entry: no route) */
	case 8: return -13;     /* RTN_PROHIBIT: -EACCES */
	case 9: return -11;     /* RTN_THROW: -EAGAIN */
	}
	return 0;
}

static __always_inline int same6(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int on_fib6(const struct fib6_result *res, struct fib6_table *table, const struct flowi6 *flp)
{
	__u32 zero = 0;
	struct routing *r = bpf_map_lookup_elem(&cur, &zero);
	if (!r || !r->skb || r->family != DT_V6)
		return 0;
	struct l34 p = { .family = DT_V6 };
	BPF_CORE_READ_INTO(&p.daddr, flp, daddr);
	BPF_CORE_READ_INTO(&p.saddr, flp, saddr);
	__u8 reverse;
	if (same6(p.daddr, r->daddr))
		reverse = 0;
	else if (same6(p.daddr, r->saddr))
		reverse = 1;    /* a reverse-path check (ip6t rpfilter) */
	else
		return 0;
	__u32 id = table ? BPF_CORE_READ(table, tb6_id) : 0;
	int err = rt6_type_error(BPF_CORE_READ(res, fib6_type));
	if (id == 255 /* RT6_TABLE_LOCAL */ && err == -113)
		return 0;       /* not a local address: the main table is asked next, and decides */
	p.proto = BPF_CORE_READ(flp, __fl_common.flowic_proto);
	struct fib6_nh *nh = BPF_CORE_READ(res, nh);
	route_event(r->skb, &p, reverse, id, err, nh && !err ? &nh->nh_common : NULL);
	return 0;
}

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(fib6_btf, const struct net *net, const struct fib6_result *res, struct fib6_table *table,
	     const struct flowi6 *flp)
{
	return on_fib6(res, table, flp);
}

SEC("raw_tp/fib6_table_lookup")
int BPF_PROG(fib6_raw, const struct net *net, const struct fib6_result *res, struct fib6_table *table,
	     const struct flowi6 *flp)
{
	return on_fib6(res, table, flp);
}

/* ---- end of the road: drop, consume, transmit ---- */

/* trusted, direct: as for on_rx (only a drop of a packet not followed reads through them). */
static __always_inline int on_free(struct sk_buff *skb, void *location, __u32 reason, __u8 point,
				   const int trusted, const int direct)
{
	__u64 key = (__u64)skb;
	struct followed *t = none_followed() ? NULL : tracked_entry(key);
	struct l34 p = {};
	int mine = 0;
	if (t) {
		skb_l34(skb, &p);
		mine = t->ident == ident(&p);
		untrack(key);
	}
	if (!mine) {
		if (point == DT_DROP)
			count_unfollowed_drop(skb, location, reason, trusted, direct);
		return 0;
	}
	__u32 zero = 0;
	struct routing *r = bpf_map_lookup_elem(&cur, &zero);
	if (r && r->skb == key)
		r->skb = 0;
	struct dt_event *e = emit(point, key, &p, skb_l3(skb));
	if (!e)
		return 0;
	e->location = (__u64)location;
	e->reason = reason;
	e->netns = skb_netns(skb);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		dev_name(e->ifname, dev);
	}
	submit(e);
	return 0;
}

/* The drop reason is kfree_skb's third argument since 5.17; older kernels (5.10) have none: the
 * argument is read only where the kernel has it (a CO-RE check, so the verifier never sees the read),
 * else 0 goes up and user space infers the reason from the drop site. */
static __always_inline __u32 kfree_skb_reason(unsigned long long *ctx)
{
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		return (__u32)ctx[2];
	return 0;
}

SEC("tp_btf/kfree_skb")
int drop_direct(unsigned long long *ctx)
{
	return on_free((struct sk_buff *)ctx[0], (void *)ctx[1], kfree_skb_reason(ctx), DT_DROP, 1, 1);
}

SEC("tp_btf/kfree_skb")
int drop_btf(unsigned long long *ctx)
{
	return on_free((struct sk_buff *)ctx[0], (void *)ctx[1], kfree_skb_reason(ctx), DT_DROP, 1, 0);
}

SEC("tracepoint/skb/kfree_skb")
int drop_tp(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;
	if (bpf_core_field_exists(ctx->reason))
		reason = BPF_CORE_READ(ctx, reason);
	return on_free((struct sk_buff *)ctx->skbaddr, ctx->location, reason, DT_DROP, 0, 0);
}

SEC("tp_btf/consume_skb")
int BPF_PROG(consume_btf, struct sk_buff *skb)
{
	/* consume_skb gained its location argument in 6.3: read it only where the kernel has it */
	void *location = NULL;
	if (bpf_core_field_exists(struct trace_event_raw_consume_skb, location))
		location = (void *)ctx[1];
	return on_free(skb, location, 0, DT_CONSUME, 1, 0);
}

SEC("tracepoint/skb/consume_skb")
int consume_tp(struct trace_event_raw_consume_skb *ctx)
{
	void *location = NULL;
	if (bpf_core_field_exists(ctx->location))
		location = ctx->location;
	return on_free((struct sk_buff *)ctx->skbaddr, location, 0, DT_CONSUME, 0, 0);
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(xmit_btf, struct sk_buff *skb, int rc, struct net_device *dev)
{
	__u64 key = (__u64)skb;
	struct l34 p = {};
	if (none_followed() || !followed_skb(skb, &p))
		return 0;
	struct dt_event *e = emit(DT_XMIT, key, &p, skb_l3(skb));
	if (!e)
		return 0;
	e->reason = (__u32)rc;
	e->netns = dev_netns(dev);
	e->ifindex = BPF_CORE_READ(dev, ifindex);
	dev_name(e->ifname, dev);
	submit(e);
	return 0;
}

/* ---- richer hooks where the kernel allows them (fentry/fexit, else kprobe/kretprobe) ---- */

/* A netfilter verdict other than ACCEPT (ret 1) for a call made for a followed skb: a drop (ret < 0;
 * the drop event itself comes from kfree_skb inside the call) or a steal (0: queued, or taken over). */
static __always_inline void verdict(__u64 skb, __u8 hook, int ret, __u64 entered, __u32 netns)
{
	if (ret == 1)
		return;     /* only drops and steals are news: the links already show accepted packets */
	struct l34 p = {};
	struct dt_event *e = emit(DT_VERDICT, skb, &p, NULL);
	if (!e)
		return;
	if (entered)
		e->ts = entered;    /* when the hook was entered: before a drop inside it (see hook_calls) */
	e->netns = netns;
	e->hook = hook;
	e->reason = (__u32)ret;
	submit(e);
}

SEC("fentry/nf_hook_slow")
int BPF_PROG(verdict_fentry, struct sk_buff *skb, struct nf_hook_state *state)
{
	__u64 key = (__u64)skb;
	if (!tracked_entry(key))
		return 0;
	struct hook_call c = { .ts = bpf_ktime_get_ns(), .netns = BPF_CORE_READ(state, net, ns.inum),
			       .hook = BPF_CORE_READ(state, hook) };
	bpf_map_update_elem(&hook_calls, &key, &c, BPF_ANY);
	return 0;
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(verdict_fexit, struct sk_buff *skb, struct nf_hook_state *state, void *entries, unsigned int s, int ret)
{
	__u64 key = (__u64)skb;
	struct hook_call *c = bpf_map_lookup_elem(&hook_calls, &key);
	if (!c)
		return 0;
	struct hook_call v = *c;
	bpf_map_delete_elem(&hook_calls, &key);
	verdict(key, v.hook, ret, v.ts, v.netns);
	return 0;
}

/* The entry of ip_route_input_noref names the packet this CPU routes next and the addresses it is
 * routed by (after any DNAT): on_fib ties the lookups inside to it, whatever probes the hooks. */
static __always_inline void route_enter(struct sk_buff *skb, __u32 daddr, __u32 saddr)
{
	if (none_followed() || !tracked_entry((__u64)skb))
		return;
	__u32 zero = 0;
	struct routing r = { .skb = (__u64)skb, .family = DT_V4 };
	r.daddr[0] = daddr;
	r.saddr[0] = saddr;
	bpf_map_update_elem(&cur, &zero, &r, BPF_ANY);
}

static __always_inline void route_result(struct sk_buff *skb, long ret)
{
	__u64 key = (__u64)skb;
	struct l34 p = {};
	__u32 zero = 0;
	struct routing *r = bpf_map_lookup_elem(&cur, &zero);
	if (r && r->skb == key)
		r->skb = 0;     /* routed: later lookups on this CPU (a RST's, say) are not this packet's */
	if (!followed_skb(skb, &p))
		return;
	struct dt_event *e = emit(DT_RTRESULT, key, &p, NULL);
	if (!e)
		return;
	e->reason = (__u32)ret;
	unsigned long refdst = BPF_CORE_READ(skb, _skb_refdst);
	struct dst_entry *dst = (struct dst_entry *)(refdst & ~1UL);
	if (dst) {
		e->location = (__u64)BPF_CORE_READ(dst, input);
		struct net_device *dev = BPF_CORE_READ(dst, dev);
		dev_name(e->out_ifname, dev);
	}
	submit(e);
}

SEC("fentry/ip_route_input_noref")
int BPF_PROG(route_fentry, struct sk_buff *skb, __u32 daddr, __u32 saddr)
{
	route_enter(skb, daddr, saddr);
	return 0;
}

SEC("fexit/ip_route_input_noref")
int BPF_PROG(route_fexit, struct sk_buff *skb, __u32 daddr, __u32 saddr, __u8 tos, struct net_device *dev, long ret)
{
	route_result(skb, ret);
	return 0;
}

SEC("kprobe/nf_hook_slow")
int BPF_KPROBE(verdict_kprobe, struct sk_buff *skb, struct nf_hook_state *state)
{
	stash(skb, BPF_CORE_READ(state, hook), STASH_VERDICT);
	return 0;
}

SEC("kretprobe/nf_hook_slow")
int BPF_KRETPROBE(verdict_kretprobe, int ret)
{
	struct entry_args a;
	if (unstash(&a, STASH_VERDICT))
		verdict(a.skb, a.hook, ret, 0, 0);
	return 0;
}

SEC("kprobe/ip_route_input_noref")
int BPF_KPROBE(route_kprobe, struct sk_buff *skb, __u32 daddr, __u32 saddr)
{
	route_enter(skb, daddr, saddr);
	stash(skb, 0, STASH_ROUTE);
	return 0;
}

SEC("kretprobe/ip_route_input_noref")
int BPF_KRETPROBE(route_kretprobe, long ret)
{
	struct entry_args a;
	if (unstash(&a, STASH_ROUTE))
		route_result((struct sk_buff *)a.skb, ret);
	return 0;
}
