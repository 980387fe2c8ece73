/* dnattrace watch: follow the packets of chosen flows through the kernel, point by point.
 *
 * A packet is followed when its (proto, port, address) matches the filter map on either side, or when
 * its skb address is already in `tracked` (so it stays followed after NAT rewrites its addresses and
 * across veth pairs, where the skb itself moves to the peer). Every program only observes: netfilter
 * programs return NF_ACCEPT, tracing programs return 0. Which of the alternative programs get loaded
 * (tp_btf / raw_tp / tracepoint, netfilter links / fexit / kprobe) is decided in user space by probing.
 */
#include "skb.h"
#include "drop_key.h"
#include "watch.h"

char LICENSE[] SEC("license") = "GPL";

#define NF_ACCEPT 1
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define HOOK_PRE 0
#define HOOK_IN 1
#define HOOK_FWD 2
#define HOOK_OUT 3

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct dt_filter_key);
	__type(value, __u8);
} filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_config);
} watch_config SEC(".maps");

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

/* One bit per port that appears in the filter: the cheap first test every packet meets, so that the
 * packets of other flows cost one header read and two inlined array lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} portbits SEC(".maps");

/* Flows whose first data packet has been followed already (each direction keyed separately). */
struct flow_key {
	__u32 saddr, daddr;
	__u16 sport, dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct flow_key);
	__type(value, __u8);
} data_seen SEC(".maps");

static __always_inline __u64 ident(struct l34 *p)
{
	return ((__u64)p->seq << 32 | p->ack) ^ ((__u64)p->ipid << 16 | p->udp_len) ^ 1;
}

/* The followed packet this CPU is routing: set when PREROUTING ends, so the fib lookup that follows on
 * the same CPU (softirq, no preemption) can be tied to it. */
struct routing {
	__u64 skb;
	__u32 daddr;
	__u32 saddr;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct routing);
} cur SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Sized by user space before loading (1 MB while --max-rate caps the flow, 4 MB without a cap). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* User space reads the ring on a timer; a record wakes it only when this much is waiting. Waking it
 * for every record costs a wake-up and a context switch per event, on the CPUs the traffic needs. */
#define WAKEUP_BYTES (128 << 10)

static __always_inline void submit(struct dt_event *e)
{
	__u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
										    : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* The kprobe fallbacks stash their entry arguments until the return probe runs, per execution context
 * (a task, or a CPU's idle task: all idle tasks are pid 0) and per probed function (ip_route_input_noref
 * runs inside nf_hook_slow under br_netfilter). Only calls made for a followed skb are stashed. */
struct stash_key {
	__u32 pid;
	__u32 cpu;      /* 1 + the CPU when pid is 0, else 0 */
	__u32 kind;     /* STASH_VERDICT, STASH_ROUTE */
};

struct entry_args {
	__u64 skb;
	__u32 hook;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct stash_key);
	__type(value, struct entry_args);
} entries SEC(".maps");

/* fentry/nf_hook_slow -> fexit: the hook of each call made for a followed skb, by skb. A dropped skb is
 * freed (and forgotten by `tracked`) before nf_hook_slow returns, so the exit cannot ask `tracked`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
} verdict_hooks SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
}

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

static __always_inline int port_hit(__u16 port_be)
{
	__u32 port = bpf_ntohs(port_be);
	__u32 idx = port >> 6;
	__u64 *w = bpf_map_lookup_elem(&portbits, &idx);
	return w && ((*w >> (port & 63)) & 1);
}

/* The cheap test every packet meets: could the IPv4 packet at l3 belong to a followed flow? One read of
 * the IP and L4 headers (direct loads where the kernel allows them, see ip_l4_at); when it could, *p
 * is filled (no second read). */
static __always_inline int maybe(unsigned char *l3, struct l34 *p, const int direct)
{
	struct ip_l4 copy;
	const struct ip_l4 *h = ip_l4_at(&copy, l3, direct);
	if (!h)
		return 0;
	__u8 proto = h->ip.protocol;
	if (h->ip.version != 4 || (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_))
		return 0;
	if (h->ip.ihl != 5 || (h->ip.frag_off & bpf_htons(0x1fff)))
		return l34_at(l3, p) == 0 && (port_hit(p->sport) || port_hit(p->dport));
	if (!port_hit(h->tcp.source) && !port_hit(h->tcp.dest))   /* TCP and UDP ports sit in the same place */
		return 0;
	__builtin_memset(p, 0, sizeof(*p));
	l34_ip(&h->ip, p);
	if (proto == IPPROTO_TCP_)
		l34_tcp(&h->tcp, 5, p);
	else
		l34_udp(&h->udp, p);
	return 1;
}

/* Does (proto, port, addr) match the filter, exactly or with any address? The port bitmap answers
 * first: a reply's destination is the client's port, so this saves its two hash lookups. */
static __always_inline int filter_hit(__u8 proto, __u16 port, __u32 addr)
{
	if (!port_hit(port))
		return 0;
	struct dt_filter_key k = { .proto = proto, .port = port, .addr = addr };
	if (bpf_map_lookup_elem(&filter, &k))
		return 1;
	k.addr = 0;
	return bpf_map_lookup_elem(&filter, &k) != NULL;
}

/* Which end of the packet is the filter's service: 1 its destination (a request), 2 its source (a reply),
 * 0 neither (not a watched flow). */
#define SERVICE_DST 1
#define SERVICE_SRC 2

static __always_inline int service_side(struct l34 *p)
{
	if (filter_hit(p->proto, p->dport, p->daddr))
		return SERVICE_DST;
	return filter_hit(p->proto, p->sport, p->saddr) ? SERVICE_SRC : 0;
}

/* The admission window for new connections (max_new per second). Shared by all CPUs: a race at the
 * window's turn admits a few more, which is harmless. */
struct window {
	__u64 start;
	__u64 admitted;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct window);
} admission SEC(".maps");

/* The admission decision per connection, keyed by its client endpoint (the side that is not the
 * filter's service): DNAT rewrites the service side only, so a SYN and the reply that comes back
 * un-NATed find the same entry, and a connection is followed whole or not at all. A client reuses its
 * ports (a TIME_WAIT port after a second), so the entry also holds the SYN's initial sequence number:
 * a retransmitted SYN finds its own decision, a new connection on the same port gets one of its own. */
struct client_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct decision {
	__u32 isn;      /* the TCP SYN's sequence number; 0 for UDP */
	__u8 yes;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct client_key);
	__type(value, struct decision);
} admitted SEC(".maps");

static __always_inline int window_open(struct dt_config *cfg)
{
	__u32 zero = 0;
	struct window *w = bpf_map_lookup_elem(&admission, &zero);
	if (!w)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	if (now - w->start > 1000000000ULL) {
		w->start = now;
		w->admitted = 0;
	}
	if (w->admitted >= cfg->max_new)
		return 0;
	__sync_fetch_and_add(&w->admitted, 1);
	return 1;
}

/* Is this packet's connection followed? Decided once per connection, at its first matching packet;
 * a connection turned away is counted once (DT_STAT_SKIPPED), however many points its packets pass. */
static __always_inline int admit(struct dt_config *cfg, struct l34 *p, int client_is_src)
{
	if (!cfg || !cfg->max_new)
		return 1;
	struct client_key k = { .proto = p->proto };
	k.addr = client_is_src ? p->saddr : p->daddr;
	k.port = client_is_src ? p->sport : p->dport;
	int opening = p->proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	struct decision *seen = bpf_map_lookup_elem(&admitted, &k);
	if (seen && !(opening && seen->isn != p->seq))
		return seen->yes;
	struct decision d = { .isn = opening ? p->seq : 0, .yes = window_open(cfg) };
	bpf_map_update_elem(&admitted, &k, &d, BPF_ANY);
	if (!d.yes)
		stat_inc(DT_STAT_SKIPPED);
	return d.yes;
}

static __always_inline int wanted(struct l34 *p)
{
	if (p->proto != IPPROTO_TCP_ && p->proto != IPPROTO_UDP_)
		return 0;
	int side = service_side(p);
	if (!side)
		return 0;
	__u32 zero = 0;
	struct dt_config *cfg = bpf_map_lookup_elem(&watch_config, &zero);
	if (!admit(cfg, p, side == SERVICE_DST))
		return 0;
	if (p->proto == IPPROTO_TCP_ && !(p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST))) {
		if (!(cfg && cfg->all_packets)) {
			/* besides SYN, SYN-ACK and RST: the first data packet of each direction */
			if (!p->payload)
				return 0;
			struct flow_key fk = { .saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport };
			__u8 one = 1;
			if (bpf_map_update_elem(&data_seen, &fk, &one, BPF_NOEXIST))
				return 0;
		}
	}
	return 1;
}

/* A bare ACK or FIN is followed only with --all: most of a busy port's packets stop here. */
static __always_inline int kind_followed(struct l34 *p)
{
	if (p->proto != IPPROTO_TCP_ || (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST)) || p->payload)
		return 1;
	__u32 zero = 0;
	struct dt_config *cfg = bpf_map_lookup_elem(&watch_config, &zero);
	return cfg && cfg->all_packets;
}

/* The followed packet's entry, or NULL; starts following it when it matches the filter (*fresh = 1:
 * a new journey starts here). */
static __always_inline struct followed *follow(__u64 skb, struct l34 *p, int *fresh)
{
	*fresh = 0;
	if (!kind_followed(p))
		return NULL;
	struct followed *t = is_tracked(skb, p);
	if (t || !wanted(p))
		return t;
	struct followed nt = { .ident = ident(p), .sig = 0, .ctinfo = 0xfe };
	track(skb, &nt);
	*fresh = 1;
	return bpf_map_lookup_elem(&tracked, &skb);
}

static __always_inline __u32 sig(struct l34 *p)
{
	return p->saddr ^ (p->daddr * 2654435761u) ^ ((__u32)p->sport << 16 | p->dport);
}

static __always_inline void fill_ct(struct dt_event *e, struct sk_buff *skb)
{
	unsigned long nfct = BPF_CORE_READ(skb, _nfct);
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);
	if (!ct) {
		e->ctinfo = DT_NO_CT;
		return;
	}
	e->ctinfo = nfct & 7;
	e->ct_status = BPF_CORE_READ(ct, status);
	e->ct_osrc = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u3.ip);
	e->ct_odst = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u3.ip);
	e->ct_osport = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u.all);
	e->ct_odport = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u.all);
	e->ct_rsrc = BPF_CORE_READ(ct, tuplehash[1].tuple.src.u3.ip);
	e->ct_rdst = BPF_CORE_READ(ct, tuplehash[1].tuple.dst.u3.ip);
	e->ct_rsport = BPF_CORE_READ(ct, tuplehash[1].tuple.src.u.all);
	e->ct_rdport = BPF_CORE_READ(ct, tuplehash[1].tuple.dst.u.all);
}

static __always_inline void dev_name(char *dst, struct net_device *dev)
{
	if (dev)
		BPF_CORE_READ_STR_INTO((char (*)[16])dst, dev, name);
}

#define DT_SHORT_EVENT __builtin_offsetof(struct dt_event, pkt)

/* Reserve and fill the common part of an event; the caller fills the rest and submits. The packet's
 * bytes are copied (a full-size record) only when a capture file is being written. */
static __always_inline struct dt_event *emit(__u8 point, __u64 skbp, struct l34 *p, unsigned char *l3)
{
	__u32 zero = 0;
	struct dt_config *cfg = bpf_map_lookup_elem(&watch_config, &zero);
	struct dt_event *e;
	if (l3 && cfg && cfg->capture) {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e)
			goto lost;
		__builtin_memset(e, 0, sizeof(*e));
		if (bpf_probe_read_kernel(e->pkt, DT_PKT_BYTES, l3) == 0)
			e->caplen = p->tot_len < DT_PKT_BYTES ? p->tot_len : DT_PKT_BYTES;
	} else {
		e = bpf_ringbuf_reserve(&events, DT_SHORT_EVENT, 0);
		if (!e)
			goto lost;
		__builtin_memset(e, 0, DT_SHORT_EVENT);
	}
	stat_inc(DT_STAT_EVENTS);
	e->ts = bpf_ktime_get_ns();
	e->skb = skbp;
	e->point = point;
	e->cpu = bpf_get_smp_processor_id();
	e->ctinfo = DT_NO_CT;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->seq = p->seq;
	e->ack = p->ack;
	return e;
lost:
	stat_inc(DT_STAT_LOST);
	return NULL;
}

/* ---- device receive ---- */

/* trusted: skb is a BTF pointer (tp_btf), so its fields are read with plain loads; else with
 * bpf_probe_read (raw_tp, classic tracepoint). A constant after inlining: one branch is compiled.
 * direct: the packet's headers too (ip_l4_at). Every packet on the machine passes here, so the
 * header read is most of this probe's cost while nothing is followed (scripts/bench watch --profile). */
#define SKB_FIELD(trusted, skb, field) ((trusted) ? (skb)->field : BPF_CORE_READ(skb, field))

static __always_inline int on_rx(struct sk_buff *skb, const int trusted, const int direct)
{
	if (SKB_FIELD(trusted, skb, protocol) != ETH_P_IP_BE)
		return 0;
	unsigned char *l3 = SKB_FIELD(trusted, skb, data);
	struct l34 p;
	if (!maybe(l3, &p, direct))
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

static __always_inline int on_nf(struct bpf_nf_ctx *ctx, __u8 stage, const int direct)
{
	struct sk_buff *skb = ctx->skb;
	if (skb->protocol != ETH_P_IP_BE)
		return NF_ACCEPT;
	const struct nf_hook_state *state = ctx->state;
	__u8 hook = state->hook;
	/* Whether a packet is followed is decided where it is first seen: the receive probe, or here at
	 * OUTPUT's first position for a packet made in this namespace. Every other position only asks
	 * whether this skb is followed (one lookup), so the packets of a busy watched port that were turned
	 * away cost them no header read, no filter lookup and no admission lookup. */
	unsigned char *l3 = skb->head + skb->network_header;
	struct l34 p;
	struct followed *t;
	int fresh = 0;
	if (hook == HOOK_OUT && stage == DT_STAGE_FIRST) {
		if (!maybe(l3, &p, direct))
			return NF_ACCEPT;
		t = follow((__u64)skb, &p, &fresh);
	} else {
		if (none_followed() || !(t = tracked_entry((__u64)skb)) || !maybe(l3, &p, direct))
			return NF_ACCEPT;
		t = same_packet((__u64)skb, t, &p);
	}
	if (!t)
		return NF_ACCEPT;
	__u32 zero = 0;
	if (hook == HOOK_PRE && stage == DT_STAGE_LAST) {
		struct routing r = { .skb = (__u64)skb, .daddr = p.daddr, .saddr = p.saddr };
		bpf_map_update_elem(&cur, &zero, &r, BPF_ANY);
	} else if ((hook == HOOK_IN || hook == HOOK_FWD) && stage == DT_STAGE_FIRST) {
		struct routing r = {};
		bpf_map_update_elem(&cur, &zero, &r, BPF_ANY);
	}
	/* inside a hook, only what changed is news: a NAT rewrite or a new conntrack state */
	unsigned long nfct = skb->_nfct;
	__u8 ctinfo = (nfct & ~7UL) ? (nfct & 7) : DT_NO_CT;
	__u32 sg = sig(&p);
	if (!fresh && stage != DT_STAGE_FIRST && stage != DT_STAGE_LAST && t->sig == sg && t->ctinfo == ctinfo)
		return NF_ACCEPT;
	t->sig = sg;
	t->ctinfo = ctinfo;

	struct dt_event *e = emit(DT_NF | (fresh ? DT_NEW : 0), (__u64)skb, &p, l3);
	if (!e)
		return NF_ACCEPT;
	e->hook = hook;
	e->stage = stage;
	e->netns = BPF_CORE_READ(state, net, ns.inum);
	struct net_device *in = state->in;
	struct net_device *out = state->out;
	struct net_device *dev = in ? in : out;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		dev_name(e->ifname, dev);
	}
	dev_name(e->out_ifname, out);
	fill_ct(e, skb);
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

/* ---- route decision: the fib lookup made for the packet this CPU is routing ---- */

static __always_inline int on_fib(__u32 table, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
{
	__u32 zero = 0;
	struct routing *r = bpf_map_lookup_elem(&cur, &zero);
	if (!r || !r->skb)
		return 0;
	__u32 daddr = BPF_CORE_READ(flp, daddr);
	__u8 reverse;
	if (daddr == r->daddr)
		reverse = 0;
	else if (daddr == r->saddr)
		reverse = 1;    /* fib_validate_source: the reverse-path check */
	else
		return 0;
	struct l34 p = {};
	p.saddr = BPF_CORE_READ(flp, saddr);
	p.daddr = daddr;
	p.proto = BPF_CORE_READ(flp, __fl_common.flowic_proto);
	struct dt_event *e = emit(DT_ROUTE, r->skb, &p, NULL);
	if (!e)
		return 0;
	e->stage = reverse;
	e->priority = table;
	e->reason = (__u32)err;
	if (nhc) {
		struct net_device *dev = BPF_CORE_READ(nhc, nhc_dev);
		e->netns = dev_netns(dev);
		e->ifindex = BPF_CORE_READ(nhc, nhc_oif);
		dev_name(e->out_ifname, dev);
		if (BPF_CORE_READ(nhc, nhc_gw_family) == 2 /* AF_INET */)
			e->gateway = BPF_CORE_READ(nhc, nhc_gw.ipv4);
	}
	submit(e);
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

/* ---- end of the road: drop, consume, transmit ---- */

/* Packets of the watched flows dropped while not followed (their connection was over --max-rate, or the
 * drop came after the last follow's deadline), counted by drop site: a sample of connections must not
 * hide a drop. Drops are rare next to packets, so the header read here costs little. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct drop_key);
	__type(value, __u64);
} unfollowed_drops SEC(".maps");

static __always_inline void count_unfollowed_drop(struct sk_buff *skb, void *location, __u32 reason,
						   const int trusted, const int direct)
{
	if (SKB_FIELD(trusted, skb, protocol) != ETH_P_IP_BE)
		return;
	struct l34 p;
	unsigned char *l3 = SKB_FIELD(trusted, skb, head) + SKB_FIELD(trusted, skb, network_header);
	if (!maybe(l3, &p, direct) || !kind_followed(&p))
		return;
	int side = service_side(&p);
	if (!side)
		return;
	__u16 port = side == SERVICE_DST ? p.dport : p.sport;
	struct drop_key k = { .location = (__u64)location, .reason = reason, .netns = skb_netns(skb),
			      .stack_id = -1, .l3proto = 0x0800, .port = bpf_ntohs(port), .l4proto = p.proto };
	count_one_drop(&unfollowed_drops, &k);
}

/* trusted, direct: as for on_rx (only a drop of a packet not followed reads through them). */
static __always_inline int on_free(struct sk_buff *skb, void *location, __u32 reason, __u8 point,
				   const int trusted, const int direct)
{
	__u64 key = (__u64)skb;
	struct followed *t = none_followed() ? NULL : tracked_entry(key);
	struct l34 p;
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

SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_direct, struct sk_buff *skb, void *location, int reason)
{
	return on_free(skb, location, reason, DT_DROP, 1, 1);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_btf, struct sk_buff *skb, void *location, int reason)
{
	return on_free(skb, location, reason, DT_DROP, 1, 0);
}

SEC("tracepoint/skb/kfree_skb")
int drop_tp(struct trace_event_raw_kfree_skb *ctx)
{
	return on_free((struct sk_buff *)ctx->skbaddr, ctx->location, ctx->reason, DT_DROP, 0, 0);
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

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(xmit_btf, struct sk_buff *skb, int rc, struct net_device *dev)
{
	__u64 key = (__u64)skb;
	struct l34 p;
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

#define STASH_VERDICT 0
#define STASH_ROUTE 1

/* A netfilter verdict other than ACCEPT (ret 1) for a call made for a followed skb: a drop (ret < 0;
 * the drop event itself comes from kfree_skb inside the call) or a steal (0: queued, or taken over). */
static __always_inline void verdict(__u64 skb, __u8 hook, int ret)
{
	if (ret == 1)
		return;     /* only drops and steals are news: the links already show accepted packets */
	struct l34 p = {};
	struct dt_event *e = emit(DT_VERDICT, skb, &p, NULL);
	if (!e)
		return;
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
	__u32 hook = BPF_CORE_READ(state, hook);
	bpf_map_update_elem(&verdict_hooks, &key, &hook, BPF_ANY);
	return 0;
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(verdict_fexit, struct sk_buff *skb, struct nf_hook_state *state, void *entries, unsigned int s, int ret)
{
	__u64 key = (__u64)skb;
	__u32 *hook = bpf_map_lookup_elem(&verdict_hooks, &key);
	if (!hook)
		return 0;
	__u8 h = *hook;
	bpf_map_delete_elem(&verdict_hooks, &key);
	verdict(key, h, ret);
	return 0;
}

static __always_inline void route_result(struct sk_buff *skb, long ret)
{
	__u64 key = (__u64)skb;
	struct l34 p;
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

SEC("fexit/ip_route_input_noref")
int BPF_PROG(route_fexit, struct sk_buff *skb, __u32 daddr, __u32 saddr, __u8 tos, struct net_device *dev, long ret)
{
	route_result(skb, ret);
	return 0;
}

static __always_inline void stash_key(struct stash_key *k, __u32 kind)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	k->pid = pid;
	k->cpu = pid ? 0 : bpf_get_smp_processor_id() + 1;
	k->kind = kind;
}

/* Entry: remember a call made for a followed skb (others are not stashed: they cost one lookup). */
static __always_inline void stash(struct sk_buff *skb, __u32 hook, __u32 kind)
{
	__u64 key = (__u64)skb;
	if (!tracked_entry(key))
		return;
	struct stash_key k;
	stash_key(&k, kind);
	struct entry_args a = { .skb = key, .hook = hook };
	bpf_map_update_elem(&entries, &k, &a, BPF_ANY);
}

static __always_inline struct entry_args *unstash(struct entry_args *out, __u32 kind)
{
	struct stash_key k;
	stash_key(&k, kind);
	struct entry_args *a = bpf_map_lookup_elem(&entries, &k);
	if (!a)
		return NULL;
	*out = *a;
	bpf_map_delete_elem(&entries, &k);
	return out;
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
		verdict(a.skb, a.hook, ret);
	return 0;
}

SEC("kprobe/ip_route_input_noref")
int BPF_KPROBE(route_kprobe, struct sk_buff *skb)
{
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
