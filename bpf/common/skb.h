/* CO-RE helpers shared by the dnattrace BPF programs: where an skb is (namespace, device) and what it
 * carries (IPv4 or IPv6 + TCP/UDP header fields). Every read goes through BPF_CORE_READ / bpf_probe_read_kernel
 * so the same code works from tp_btf, raw_tp, classic tracepoints and netfilter programs. */
#ifndef DNATTRACE_SKB_H
#define DNATTRACE_SKB_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP_BE 0x0008     /* htons(ETH_P_IP) */
#define ETH_P_IPV6_BE 0xDD86   /* htons(ETH_P_IPV6) */
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58

/* l34.family, dt_event.family: the IP version */
#define DT_V4 4
#define DT_V6 6

/* Addresses are 16 bytes for both families: an IPv4 address is the first word, the other three are 0
 * (the layout of the kernel's union nf_inet_addr, which conntrack tuples use for both families). */
struct l34 {
	__u32 saddr[4], daddr[4];   /* network order */
	__u16 sport, dport;      /* network order; 0 when not TCP/UDP */
	__u8 proto;              /* IP protocol (IPv6: the upper-layer header's), 0 when not IP */
	__u8 tcp_flags;
	__u8 family;             /* DT_V4, DT_V6; 0 when not IP */
	__u8 pad;
	__u32 tot_len;           /* the IP packet's length */
	__u16 ipid;          /* IPv4 id, IPv6 payload length: with seq/ack it tells a packet from a later one reusing the skb */
	__u16 udp_len;
	__u32 seq, ack;      /* TCP sequence and acknowledgement numbers (network order) */
	__u32 payload;       /* TCP payload bytes in this packet */
};

/* A field of skb: with trusted (a BTF pointer, tp_btf) a plain load, else BPF_CORE_READ (raw_tp,
 * classic tracepoint). trusted is a constant after inlining: one branch is compiled. */
#define SKB_FIELD(trusted, skb, field) ((trusted) ? (skb)->field : BPF_CORE_READ(skb, field))

/* The namespace an skb is in: its device's, else its socket's, else its route's device's (a packet
 * freed from a queue after its device and socket were let go: watch printed such drops "in ?"); 0
 * when none is known. */
static __always_inline __u32 skb_netns(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		return BPF_CORE_READ(dev, nd_net.net, ns.inum);
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (sk)
		return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	struct dst_entry *dst = (struct dst_entry *)(BPF_CORE_READ(skb, _skb_refdst) & ~1UL);
	if (dst && (dev = BPF_CORE_READ(dst, dev)))
		return BPF_CORE_READ(dev, nd_net.net, ns.inum);
	return 0;
}

static __always_inline __u32 dev_netns(struct net_device *dev)
{
	return dev ? BPF_CORE_READ(dev, nd_net.net, ns.inum) : 0;
}

/* The 20 bytes after an IP header: the whole of a TCP or UDP header without options, which is what
 * almost every packet has (TCP and UDP ports sit in the same place). */
#define L4_AFTER_IP union { struct tcphdr tcp; struct udphdr udp; }

/* An IPv4 header and its L4 header, read with one bpf_probe_read_kernel. */
struct ip_l4 {
	struct iphdr ip;
	L4_AFTER_IP;
};

static __always_inline void l34_ip(const struct iphdr *ip, struct l34 *out)
{
	out->family = DT_V4;
	out->saddr[0] = ip->saddr;
	out->daddr[0] = ip->daddr;
	out->proto = ip->protocol;
	out->tot_len = bpf_ntohs(ip->tot_len);
	out->ipid = ip->id;
}

/* hlen: the bytes of IP headers before the TCP header (IPv4 ihl * 4; IPv6 40 + extension headers). */
static __always_inline void l34_tcp(const struct tcphdr *th, __u32 hlen, struct l34 *out)
{
	out->sport = th->source;
	out->dport = th->dest;
	out->tcp_flags = ((const __u8 *)th)[13];
	out->seq = th->seq;
	out->ack = th->ack_seq;
	__u32 hdrs = hlen + th->doff * 4;
	out->payload = out->tot_len > hdrs ? out->tot_len - hdrs : 0;
}

static __always_inline void l34_udp(const struct udphdr *uh, struct l34 *out)
{
	out->sport = uh->source;
	out->dport = uh->dest;
	out->udp_len = uh->len;
}

/* bpf_rdonly_cast(ptr, 0) turns any kernel address into read-only memory that the program may load
 * from directly; the JIT guards each load as bpf_probe_read_kernel would (a bad address reads as 0),
 * without a helper call per read. Kernels whose verifier only casts to structs refuse it: the programs
 * that use it are alternatives, chosen by probing (capability direct_read). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The IPv4 header at l3 and the 20 bytes after it, to read fields from: the packet itself (direct, a
 * constant after inlining: only the fields used are loaded), or a copy made in *copy; NULL when the
 * copy cannot be made. */
static __always_inline const struct ip_l4 *ip_l4_at(struct ip_l4 *copy, unsigned char *l3, const int direct)
{
	if (direct)
		return bpf_rdonly_cast(l3, 0);
	return bpf_probe_read_kernel(copy, sizeof(*copy), l3) ? NULL : copy;
}

/* Read the IPv4 and L4 header fields of the IPv4 header at l3. Returns 0 on success. */
static __always_inline int l34_at4(unsigned char *l3, struct l34 *out)
{
	struct ip_l4 h;
	__builtin_memset(out, 0, sizeof(*out));
	if (bpf_probe_read_kernel(&h, sizeof(h), l3))
		return -1;
	if (h.ip.version != 4)
		return -1;
	l34_ip(&h.ip, out);
	/* only the first fragment carries ports */
	if (h.ip.frag_off & bpf_htons(0x1fff))
		return 0;
	if (h.ip.ihl != 5 && bpf_probe_read_kernel(&h.tcp, sizeof(h.tcp), l3 + h.ip.ihl * 4))
		return 0;     /* IP options: the L4 header is further on */
	if (h.ip.protocol == IPPROTO_TCP_)
		l34_tcp(&h.tcp, h.ip.ihl * 4, out);
	else if (h.ip.protocol == IPPROTO_UDP_)
		l34_udp(&h.udp, out);
	return 0;
}

/* An IPv6 header and the L4 header of a packet without extension headers (almost every packet), read
 * with one bpf_probe_read_kernel. */
struct ip6_l4 {
	struct ipv6hdr ip6;
	L4_AFTER_IP;
};

static __always_inline void l34_ip6(const struct ipv6hdr *ip6, struct l34 *out)
{
	out->family = DT_V6;
	__builtin_memcpy(out->saddr, &ip6->saddr, 16);
	__builtin_memcpy(out->daddr, &ip6->daddr, 16);
	out->proto = ip6->nexthdr;
	out->tot_len = 40 + bpf_ntohs(ip6->payload_len);
	out->ipid = ip6->payload_len;
}

static __always_inline const struct ip6_l4 *ip6_l4_at(struct ip6_l4 *copy, unsigned char *l3, const int direct)
{
	if (direct)
		return bpf_rdonly_cast(l3, 0);
	return bpf_probe_read_kernel(copy, sizeof(*copy), l3) ? NULL : copy;
}

/* Extension headers walked before the upper-layer header: hop-by-hop, routing, fragment, destination
 * options, AH. More than IP6_MAX_EXT of them is not a packet anyone follows. */
#define IP6_MAX_EXT 6

static __always_inline int ip6_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60;
}

/* Past the extension headers of the IPv6 packet at l3: *nh becomes the upper-layer protocol and *off
 * its offset. Returns 0, 1 for a fragment that is not the first (no ports in it), -1 when unreadable
 * or too long a chain. */
static __always_inline int ip6_skip_ext(unsigned char *l3, __u8 *nh, __u32 *off)
{
	__u8 next = *nh;
	__u32 o = 40;
#pragma unroll
	for (int i = 0; i < IP6_MAX_EXT; i++) {
		if (!ip6_ext(next))
			break;
		struct { __u8 nexthdr, hdrlen; __be16 frag_off; } h;
		if (bpf_probe_read_kernel(&h, sizeof(h), l3 + o))
			return -1;
		if (next == 44) {              /* fragment header: 8 bytes, the offset in its upper 13 bits */
			o += 8;
			if (h.frag_off & bpf_htons(0xfff8)) {
				*nh = h.nexthdr;
				return 1;
			}
		} else if (next == 51) {       /* AH counts in 4-byte words, less 2 */
			o += (h.hdrlen + 2) * 4;
		} else {
			o += (h.hdrlen + 1) * 8;
		}
		next = h.nexthdr;
	}
	if (ip6_ext(next))
		return -1;
	*nh = next;
	*off = o;
	return 0;
}

/* Read the IPv6 and L4 header fields of the IPv6 header at l3, past any extension headers. */
static __always_inline int l34_at6(unsigned char *l3, struct l34 *out)
{
	struct ip6_l4 h;
	__builtin_memset(out, 0, sizeof(*out));
	if (bpf_probe_read_kernel(&h, sizeof(h), l3))
		return -1;
	if (h.ip6.version != 6)
		return -1;
	l34_ip6(&h.ip6, out);
	__u8 nh = h.ip6.nexthdr;
	__u32 off = 40;
	if (ip6_ext(nh)) {
		int r = ip6_skip_ext(l3, &nh, &off);
		if (r < 0)
			return 0;
		out->proto = nh;
		if (r > 0 || bpf_probe_read_kernel(&h.tcp, sizeof(h.tcp), l3 + off))
			return 0;
	}
	if (nh == IPPROTO_TCP_)
		l34_tcp(&h.tcp, off, out);
	else if (nh == IPPROTO_UDP_)
		l34_udp(&h.udp, out);
	return 0;
}

/* The headers at l3 of a packet whose ethertype (skb->protocol) is proto_be. */
static __always_inline int l34_at(__be16 proto_be, unsigned char *l3, struct l34 *out)
{
	if (proto_be == ETH_P_IP_BE)
		return l34_at4(l3, out);
	if (proto_be == ETH_P_IPV6_BE)
		return l34_at6(l3, out);
	__builtin_memset(out, 0, sizeof(*out));
	return -1;
}

/* The skb's network header (set once the IP layer has the packet: netfilter, transmit, drops). */
static __always_inline unsigned char *skb_l3(struct sk_buff *skb)
{
	return BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
}

/* Headers at the skb's network header. */
static __always_inline int skb_l34(struct sk_buff *skb, struct l34 *out)
{
	return l34_at(BPF_CORE_READ(skb, protocol), skb_l3(skb), out);
}

#endif
