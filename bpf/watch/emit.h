/* What crosses to user space: events in a ring buffer (struct dt_event, watch.h) and the per-CPU stats
 * (DT_STAT_*). emit() reserves and fills an event's common part, the caller adds what its point knows
 * (fill_ct, dev_name) and submit()s it. */
#ifndef DNATTRACE_WATCH_EMIT_H
#define DNATTRACE_WATCH_EMIT_H

#include "skb.h"
#include "watch.h"
#include "config.h"

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

/* Only on the way up through the band above WAKEUP_BYTES: a reader that is behind (it reads a batch at a
 * time and leaves the rest, see tracer.py) keeps the backlog above the mark, and a wake-up forced on
 * every record then costs the traffic a wake-up per event for a reader already awake. */
#define WAKEUP_BAND (8 << 10)

static __always_inline void submit(struct dt_event *e)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 flags = avail > WAKEUP_BYTES && avail <= WAKEUP_BYTES + WAKEUP_BAND ? BPF_RB_FORCE_WAKEUP
										  : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* Atomic although the slots are per CPU: a program in softirq can interrupt one in process context on
 * the same CPU (OUTPUT's, say), and a plain += would lose one of the two counts. */
static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void fill_ct(struct dt_event *e, struct sk_buff *skb)
{
	unsigned long nfct = BPF_CORE_READ(skb, _nfct);
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);
	if (!ct) {
		/* no entry: untracked on purpose (IP_CT_UNTRACKED, 7) or none (not yet, or invalid) */
		e->ctinfo = (nfct & 7) == 7 ? DT_UNTRACKED : DT_NO_CT;
		return;
	}
	e->ctinfo = nfct & 7;
	e->ct_status = BPF_CORE_READ(ct, status);
	/* u3 is 16 bytes for both families (an IPv4 tuple's other 12 are 0): one read each, as before */
	BPF_CORE_READ_INTO(&e->ct_osrc, ct, tuplehash[0].tuple.src.u3.all);
	BPF_CORE_READ_INTO(&e->ct_odst, ct, tuplehash[0].tuple.dst.u3.all);
	e->ct_osport = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u.all);
	e->ct_odport = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u.all);
	BPF_CORE_READ_INTO(&e->ct_rsrc, ct, tuplehash[1].tuple.src.u3.all);
	BPF_CORE_READ_INTO(&e->ct_rdst, ct, tuplehash[1].tuple.dst.u3.all);
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
	e->family = p->family;
	__builtin_memcpy(e->saddr, p->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, p->daddr, sizeof(e->daddr));
	e->sport = p->sport;
	e->dport = p->dport;
	e->seq = p->seq;
	e->ack = p->ack;
	return e;
lost:
	stat_inc(DT_STAT_LOST);
	return NULL;
}

#endif
