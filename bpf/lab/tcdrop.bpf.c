/* The lab's below-IP fault (scenario tc-ingress-drop): a tc classifier in direct-action mode that drops
 * TCP packets to the lab's published port 8080, the way a host firewall or a CNI's BPF datapath drops at
 * tc ingress. Not part of any product command: the lab attaches it with tc to a namespace it made. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define ETH_HLEN_ 14
#define PUBLISHED_PORT 8080

SEC("tc")
int lab_tc_drop(struct __sk_buff *skb)
{
	__u8 ihl_byte, proto;
	__u16 dport;

	if (skb->protocol != bpf_htons(0x0800))
		return 0;	/* TC_ACT_OK */
	if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ihl_byte, 1) || bpf_skb_load_bytes(skb, ETH_HLEN_ + 9, &proto, 1))
		return 0;
	if (proto != 6)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + (ihl_byte & 0x0f) * 4 + 2, &dport, 2))
		return 0;
	return dport == bpf_htons(PUBLISHED_PORT) ? 2 /* TC_ACT_SHOT */ : 0;
}
