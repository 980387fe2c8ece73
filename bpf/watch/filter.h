/* Which packets watch follows: the filter map of (proto, port, address) and its port bitmap, the cheap
 * test every packet meets (maybe), which end is the service (service_side), the admission of new
 * connections (max_new per second), and which kinds of packet are news (wanted, kind_followed). Also the
 * count of the watched flows' packets dropped while not followed. */
#ifndef DNATTRACE_WATCH_FILTER_H
#define DNATTRACE_WATCH_FILTER_H

#include "skb.h"
#include "drop_key.h"
#include "watch.h"
#include "config.h"
#include "emit.h"

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The flows to follow (struct dt_filter_key, watch.h), filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct dt_filter_key);
	__type(value, __u8);
} filter SEC(".maps");

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
	__u32 saddr[4], daddr[4];
	__u16 sport, dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct flow_key);
	__type(value, __u8);
} data_seen SEC(".maps");

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
static __always_inline int maybe4(unsigned char *l3, struct l34 *p, const int direct)
{
	struct ip_l4 copy;
	const struct ip_l4 *h = ip_l4_at(&copy, l3, direct);
	if (!h)
		return 0;
	__u8 proto = h->ip.protocol;
	if (h->ip.version != 4 || (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_))
		return 0;
	if (h->ip.ihl != 5 || (h->ip.frag_off & bpf_htons(0x1fff)))
		return l34_at4(l3, p) == 0 && (port_hit(p->sport) || port_hit(p->dport));
	if (!port_hit(h->tcp.source) && !port_hit(h->tcp.dest))   /* TCP and UDP ports sit in the same place */
		return 0;
	__builtin_memset(p, 0, sizeof(*p));
	l34_ip(&h->ip, p);
	if (proto == IPPROTO_TCP_)
		l34_tcp(&h->tcp, 20, p);
	else
		l34_udp(&h->udp, p);
	return 1;
}

/* The same for IPv6: one read covers the fixed header and a TCP/UDP header right after it; a packet
 * with extension headers takes the walk of l34_at6. */
static __always_inline int maybe6(unsigned char *l3, struct l34 *p, const int direct)
{
	struct ip6_l4 copy;
	const struct ip6_l4 *h = ip6_l4_at(&copy, l3, direct);
	if (!h)
		return 0;
	__u8 nh = h->ip6.nexthdr;
	if (h->ip6.version != 6)
		return 0;
	if (nh != IPPROTO_TCP_ && nh != IPPROTO_UDP_) {
		if (!ip6_ext(nh))
			return 0;
		return l34_at6(l3, p) == 0 && (p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_) &&
		       (port_hit(p->sport) || port_hit(p->dport));
	}
	if (!port_hit(h->tcp.source) && !port_hit(h->tcp.dest))
		return 0;
	__builtin_memset(p, 0, sizeof(*p));
	l34_ip6(&h->ip6, p);
	if (nh == IPPROTO_TCP_)
		l34_tcp(&h->tcp, 40, p);
	else
		l34_udp(&h->udp, p);
	return 1;
}

/* Could the packet at l3, of ethertype proto_be (skb->protocol), belong to a followed flow? The family
 * is decided by this one comparison: IPv4 takes the same path it took before IPv6 was followed.
 * Callers pass a zeroed *p ({}): maybe() fills it only on some paths, and clang may load a field of it
 * before testing the answer; the 5.10 and 6.1 verifiers refuse a read of stack never written on the
 * path taken ("invalid read from stack"), later ones allow it to privileged programs. */
static __always_inline int maybe(__be16 proto_be, unsigned char *l3, struct l34 *p, const int direct)
{
	if (proto_be == ETH_P_IP_BE)
		return maybe4(l3, p, direct);
	if (proto_be == ETH_P_IPV6_BE)
		return maybe6(l3, p, direct);
	return 0;
}

/* Does (proto, port, addr) match the filter, exactly or with any address? The port bitmap answers
 * first: a reply's destination is the client's port, so this saves its two hash lookups. */
static __always_inline int filter_hit(__u8 proto, __u16 port, __u8 family, const __u32 *addr)
{
	if (!port_hit(port))
		return 0;
	struct dt_filter_key k = { .proto = proto, .family = family, .port = port };
	k.addr[0] = addr[0];
	if (family == DT_V6) {
		k.addr[1] = addr[1];
		k.addr[2] = addr[2];
		k.addr[3] = addr[3];
	}
	if (bpf_map_lookup_elem(&filter, &k))
		return 1;
	k.family = 0;
	k.addr[0] = k.addr[1] = k.addr[2] = k.addr[3] = 0;
	return bpf_map_lookup_elem(&filter, &k) != NULL;
}

/* Which end of the packet is the filter's service: 1 its destination (a request), 2 its source (a reply),
 * 0 neither (not a watched flow). */
#define SERVICE_DST 1
#define SERVICE_SRC 2

static __always_inline int service_side(struct l34 *p)
{
	if (filter_hit(p->proto, p->dport, p->family, p->daddr))
		return SERVICE_DST;
	return filter_hit(p->proto, p->sport, p->family, p->saddr) ? SERVICE_SRC : 0;
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
 * a retransmitted SYN finds its own decision, a new connection on the same port gets one of its own.
 * Sized for a busy port followed without a cap: 64k connections of a few seconds each. */
struct client_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct decision {
	__u32 isn;      /* the TCP SYN's sequence number; 0 for UDP */
	__u8 yes;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, struct decision);
} admitted SEC(".maps");

/* A new connection is admitted only while less than this share of the event ring waits for the reader:
 * when user space cannot keep up, fewer connections are followed, and those followed keep all their
 * events (a connection with holes in its story would have no verdict). */
#define ADMIT_RING_SHARE 4

static __always_inline int window_open(struct dt_config *cfg)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >
	    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / ADMIT_RING_SHARE) {
		stat_inc(DT_STAT_SHED);
		return 0;
	}
	if (!cfg->max_new)
		return 1;
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

/* Is this packet's connection followed? Decided once per connection, at its opening packet (a TCP SYN,
 * any UDP datagram); a connection turned away is counted once (DT_STAT_SKIPPED), however many points
 * its packets pass. A TCP packet of a connection never seen opening (it began before watching, or its
 * decision left the LRU) is not an attempt: the client's late ACK, FIN or RST, a reply to a socket long
 * closed. It is never followed, so it cannot start a connection of its own. */
static __always_inline int admit(struct dt_config *cfg, struct l34 *p, int client_is_src)
{
	if (!cfg)
		return 1;
	struct client_key k = { .proto = p->proto, .family = p->family };
	__builtin_memcpy(k.addr, client_is_src ? p->saddr : p->daddr, sizeof(k.addr));
	k.port = client_is_src ? p->sport : p->dport;
	int tcp = p->proto == IPPROTO_TCP_;
	int opening = !tcp || (client_is_src && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN);
	struct decision *seen = bpf_map_lookup_elem(&admitted, &k);
	if (seen && !(tcp && opening && seen->isn != p->seq))
		return seen->yes;
	if (!opening)
		return 0;
	struct decision d = { .isn = tcp ? p->seq : 0, .yes = window_open(cfg) };
	bpf_map_update_elem(&admitted, &k, &d, BPF_ANY);
	stat_inc(d.yes ? DT_STAT_ADMITTED : DT_STAT_SKIPPED);
	return d.yes;
}

/* The watched namespaces (inode numbers), filled by user space. The filter matches addresses and ports,
 * which another host on the same machine (a second lab, a nested set-up) may use too: a connection is
 * decided (admitted, or counted as not followed) only where it enters a watched namespace, so that
 * another's traffic neither takes the admissions nor swells the counts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} watched_netns SEC(".maps");

static __always_inline int netns_watched(struct dt_config *cfg, __u64 skb)
{
	if (!cfg || !cfg->netns_only)
		return 1;
	__u32 inum = skb_netns((struct sk_buff *)skb);
	return bpf_map_lookup_elem(&watched_netns, &inum) != NULL;
}

static __always_inline int wanted(struct l34 *p, __u64 skb)
{
	if (p->proto != IPPROTO_TCP_ && p->proto != IPPROTO_UDP_)
		return 0;
	int side = service_side(p);
	if (!side)
		return 0;
	__u32 zero = 0;
	struct dt_config *cfg = bpf_map_lookup_elem(&watch_config, &zero);
	if (!netns_watched(cfg, skb))
		return 0;
	if (!admit(cfg, p, side == SERVICE_DST))
		return 0;
	if (p->proto == IPPROTO_TCP_ && !(p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST))) {
		if (!(cfg && cfg->all_packets)) {
			/* besides SYN, SYN-ACK and RST: the first data packet of each direction */
			if (!p->payload)
				return 0;
			struct flow_key fk = { .sport = p->sport, .dport = p->dport };
			__builtin_memcpy(fk.saddr, p->saddr, sizeof(fk.saddr));
			__builtin_memcpy(fk.daddr, p->daddr, sizeof(fk.daddr));
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
	__be16 l3proto = SKB_FIELD(trusted, skb, protocol);
	struct l34 p = {};
	unsigned char *l3 = SKB_FIELD(trusted, skb, head) + SKB_FIELD(trusted, skb, network_header);
	if (!maybe(l3proto, l3, &p, direct) || !kind_followed(&p))
		return;
	int side = service_side(&p);
	if (!side)
		return;
	__u16 port = side == SERVICE_DST ? p.dport : p.sport;
	struct drop_key k = { .location = (__u64)location, .reason = reason, .netns = skb_netns(skb),
			      .stack_id = -1, .l3proto = bpf_ntohs(l3proto), .port = bpf_ntohs(port), .l4proto = p.proto };
	count_one_drop(&unfollowed_drops, &k);
}

#endif
