/* CO-RE helpers shared by the dnattrace BPF programs: where an skb is (namespace, device) and what it
 * carries (IPv4 + TCP/UDP header fields). Every read goes through BPF_CORE_READ / bpf_probe_read_kernel
 * so the same code works from tp_btf, raw_tp, classic tracepoints and netfilter programs. */
#ifndef DNATTRACE_SKB_H
#define DNATTRACE_SKB_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP_BE 0x0008   /* htons(ETH_P_IP) */
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

struct l34 {
	__u32 saddr, daddr;      /* network order */
	__u16 sport, dport;      /* network order; 0 when not TCP/UDP */
	__u8 proto;              /* IP protocol, 0 when not IPv4 */
	__u8 tcp_flags;
	__u8 ihl_ok;
	__u8 pad;
	__u32 tot_len;
	__u16 ipid;          /* IP id: with seq/ack it tells a packet from a later one reusing the skb */
	__u16 udp_len;
	__u32 seq, ack;      /* TCP sequence and acknowledgement numbers (network order) */
	__u32 payload;       /* TCP payload bytes in this packet */
};

/* A field of skb: with trusted (a BTF pointer, tp_btf) a plain load, else BPF_CORE_READ (raw_tp,
 * classic tracepoint). trusted is a constant after inlining: one branch is compiled. */
#define SKB_FIELD(trusted, skb, field) ((trusted) ? (skb)->field : BPF_CORE_READ(skb, field))

/* The namespace an skb is in: its device's, else its socket's; 0 when neither is known. */
static __always_inline __u32 skb_netns(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		return BPF_CORE_READ(dev, nd_net.net, ns.inum);
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (sk)
		return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	return 0;
}

static __always_inline __u32 dev_netns(struct net_device *dev)
{
	return dev ? BPF_CORE_READ(dev, nd_net.net, ns.inum) : 0;
}

/* An IPv4 header with the first 20 bytes after it: the whole of a TCP or UDP header without options,
 * which is what almost every packet has, read with one bpf_probe_read_kernel. */
struct ip_l4 {
	struct iphdr ip;
	union {
		struct tcphdr tcp;
		struct udphdr udp;
	};
};

static __always_inline void l34_ip(const struct iphdr *ip, struct l34 *out)
{
	out->saddr = ip->saddr;
	out->daddr = ip->daddr;
	out->proto = ip->protocol;
	out->tot_len = bpf_ntohs(ip->tot_len);
	out->ipid = ip->id;
}

static __always_inline void l34_tcp(const struct tcphdr *th, __u32 ihl, struct l34 *out)
{
	out->sport = th->source;
	out->dport = th->dest;
	out->tcp_flags = ((const __u8 *)th)[13];
	out->seq = th->seq;
	out->ack = th->ack_seq;
	__u32 hdrs = ihl * 4 + th->doff * 4;
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
static __always_inline int l34_at(unsigned char *l3, struct l34 *out)
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
		l34_tcp(&h.tcp, h.ip.ihl, out);
	else if (h.ip.protocol == IPPROTO_UDP_)
		l34_udp(&h.udp, out);
	return 0;
}

/* The skb's network header (set once the IP layer has the packet: netfilter, transmit, drops). */
static __always_inline unsigned char *skb_l3(struct sk_buff *skb)
{
	return BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
}

/* Headers at the skb's network header. */
static __always_inline int skb_l34(struct sk_buff *skb, struct l34 *out)
{
	if (BPF_CORE_READ(skb, protocol) != ETH_P_IP_BE) {
		__builtin_memset(out, 0, sizeof(*out));
		return -1;
	}
	return l34_at(skb_l3(skb), out);
}

/* Headers at skb->data: at device receive the network header is not reset yet, data is past L2. */
static __always_inline int skb_l34_data(struct sk_buff *skb, struct l34 *out)
{
	if (BPF_CORE_READ(skb, protocol) != ETH_P_IP_BE) {
		__builtin_memset(out, 0, sizeof(*out));
		return -1;
	}
	return l34_at(BPF_CORE_READ(skb, data), out);
}

#endif
