/* Event layout shared by watch.bpf.c and dnattrace/watch/abi.py (keep the two in step: abi.py checks the
 * record size at run time, and tests/test_events.py compiles this header with the host compiler and
 * checks abi.py's offsets against it). Plain C: no BPF helpers here. */
#ifndef DNATTRACE_WATCH_H
#define DNATTRACE_WATCH_H

/* dt_event.point */
#define DT_RX        1   /* netif_receive_skb: arrived on a device */
#define DT_NF        2   /* netfilter link: hook in .hook, stage in .stage */
#define DT_ROUTE     3   /* fib_table_lookup for the packet routed on this CPU; .stage 1 = reverse-path check */
#define DT_XMIT      4   /* net_dev_xmit */
#define DT_DROP      5   /* kfree_skb: .location, .reason */
#define DT_CONSUME   6   /* consume_skb: .location */
#define DT_VERDICT   7   /* fexit/kretprobe nf_hook_slow: .hook, .reason = return value */
#define DT_RTRESULT  8   /* fexit/kretprobe ip_route_input_noref: .reason = return, .location = dst->input */

#define DT_NEW       0x80  /* or-ed into .point: a new journey starts at this event */

/* dt_event.stage for DT_NF */
#define DT_STAGE_FIRST     0
#define DT_STAGE_CONNTRACK 1
#define DT_STAGE_DNAT      2
#define DT_STAGE_FILTER    3
#define DT_STAGE_SNAT      4
#define DT_STAGE_LAST      5
/* DT_STAGE_CHAIN + n: the n-th chain bracket of a hook (nf_chain<n>), linked just before a priority where
 * base chains run; its priority is looked up in the `brackets` map and reported in .priority */
#define DT_STAGE_CHAIN     16
#define DT_CHAIN_SLOTS     6

/* key of the `brackets` map: where a chain bracket program is linked (user space fills it) */
struct dt_bracket {
	__u32 netns;
	__u8 hook;
	__u8 slot;
	__u8 family;        /* 4 or 6 */
	__u8 pad;
};

#define DT_NO_CT 0xff
#define DT_UNTRACKED 0xfe   /* _nfct is IP_CT_UNTRACKED: a NOTRACK rule made conntrack skip it */
#define DT_PKT_BYTES 128

/* Addresses are 16 bytes for both families (dt_event.family says which): an IPv4 address is the first
 * word and the other three are 0, the layout of the kernel's union nf_inet_addr. */
struct dt_event {
	__u64 ts;
	__u64 skb;
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 reason;
	__s32 priority;     /* DT_ROUTE: table id; DT_NF chain bracket: the link's priority */
	__u8 point;
	__u8 hook;
	__u8 stage;
	__u8 proto;
	__u8 tcp_flags;
	__u8 ctinfo;        /* enum ip_conntrack_info, DT_NO_CT when the packet has no conntrack entry */
	__u16 caplen;
	__u8 family;        /* 4 or 6 (DT_V4, DT_V6 in common/skb.h); 0 when nothing of the packet was read */
	__u8 pad[3];
	__u32 saddr[4], daddr[4];
	__u16 sport, dport;
	__u32 ct_status;
	__u32 ct_osrc[4], ct_odst[4];
	__u16 ct_osport, ct_odport;
	__u32 ct_rsrc[4], ct_rdst[4];
	__u16 ct_rsport, ct_rdport;
	__u32 gateway[4];   /* DT_ROUTE: next hop gateway, 0 = directly connected */
	__u32 cpu;
	__u32 seq, ack;     /* TCP sequence and acknowledgement numbers (network order); 0 otherwise */
	char ifname[16];
	char out_ifname[16];
	__u8 pkt[DT_PKT_BYTES];
};

/* filter map key: follow packets whose (proto, port, addr) matches on source or destination; family 0
 * with addr 0 = any address of either family */
struct dt_filter_key {
	__u8 proto;
	__u8 family;   /* 4, 6, or 0 (any) */
	__u16 port;    /* network order */
	__u32 addr[4]; /* network order; IPv4 in addr[0] */
};

struct dt_config {
	__u32 all_packets;   /* 0: SYN, RST, UDP and each direction's first data packet; 1: every packet */
	__u32 capture;       /* 1: events carry the packet's bytes (for a pcapng file) */
	__u32 max_new;       /* new journeys started per second at most (0: no limit); the rest are counted */
	__u32 netns_only;    /* 1: decide connections only in the namespaces of watched_netns (filter.h) */
};

/* stats slots */
#define DT_STAT_EVENTS  0
#define DT_STAT_LOST    1
#define DT_STAT_SKIPPED 2   /* connections turned away: over the max_new rate, or the ring was filling */
#define DT_STAT_ADMITTED 3  /* connections admitted (followed from their opening packet) */
#define DT_STAT_SHED    4   /* of the SKIPPED: turned away because the event ring was filling */
#define DT_STAT_MAX     5

#endif
