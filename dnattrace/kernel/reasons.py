"""What the kernel's drop reasons mean, in plain words: the one table shared by `drops` and `diagnose`.

Keys are enum skb_drop_reason member names without the SKB_DROP_REASON_ prefix. The numbers are never
written here: they come from the running kernel's BTF (dnattrace.btf). Names that some kernels have and
others do not are listed in OTHER_KERNELS so the table can be checked against the running kernel.
"""
from __future__ import annotations

MEANINGS = {
    # generic
    "NOT_SPECIFIED": "freed without a specific reason (often harmless: e.g. an IGMP or unhandled packet)",
    "NO_SOCKET": "no socket is listening on the destination port (TCP answers with a RST, UDP with ICMP)",
    "SOCKET_CLOSE": "the socket was closed with data still queued",
    "SOCKET_FILTER": "a socket filter (BPF/SO_ATTACH_FILTER) rejected the packet",
    "SOCKET_RCVBUFF": "the receiving socket's buffer is full: the application reads too slowly",
    "SOCKET_BACKLOG": "the socket's backlog is full while the socket is busy",
    "PKT_TOO_SMALL": "the packet is shorter than its headers say (truncated or malformed)",
    "PKT_TOO_BIG": "the packet is larger than the MTU allows and cannot be fragmented",
    "TCP_CSUM": "bad TCP checksum",
    "UDP_CSUM": "bad UDP checksum",
    "ICMP_CSUM": "bad ICMP checksum",
    "SKB_CSUM": "checksum computation failed",
    "NETFILTER_DROP": "a netfilter rule or chain policy dropped it (iptables/nftables DROP, or a Docker rule)",
    "OTHERHOST": "the packet is addressed to another host's MAC (seen in promiscuous mode): not for us",
    "UNICAST_IN_L2_MULTICAST": "an IP unicast packet arrived in a link-layer multicast/broadcast frame",
    "XFRM_POLICY": "an IPsec (xfrm) policy rejected the packet",
    "PROTO_MEM": "the protocol is over its memory limit (tcp_mem/udp_mem)",
    "NOMEM": "the kernel could not allocate memory for the packet",
    "HDR_TRUNC": "a header is truncated",
    "INVALID_PROTO": "the packet's protocol field is invalid",
    "UNHANDLED_PROTO": "no handler for this protocol",
    "QUEUE_PURGE": "a queue was purged (e.g. on socket close or device down): usually harmless",
    "CPU_BACKLOG": "the CPU's input backlog is full (net.core.netdev_max_backlog): receive overload",
    "FULL_RING": "a device ring (e.g. tun/veth) is full",
    "DEV_READY": "the device is not up or not ready",
    "DEV_HDR": "the device header is invalid",
    "TC_INGRESS": "a tc ingress filter or action dropped it",
    "TC_EGRESS": "a tc egress filter or action dropped it",
    "XDP": "an XDP program dropped it",
    "BPF_CGROUP_EGRESS": "a cgroup BPF egress program dropped it",
    "SECURITY_HOOK": "a security module (LSM) hook dropped it",
    "IPV6DISABLED": "IPv6 is disabled on this device",
    "PFMEMALLOC": "the packet used emergency memory reserves and its receiver may not use them",
    "RECURSION_LIMIT": "the transmit path recursed too deep (a device loop?)",
    "NO_TX_TARGET": "there is no device to transmit on",
    "MAC_INVALID_SOURCE": "the source MAC address is invalid",
    "LOCAL_MAC": "the source MAC address is one of ours (a loop?)",
    "BRIDGE_INGRESS_STP_STATE": "the bridge port is not forwarding (STP state)",
    # IPv4
    "IP_CSUM": "bad IPv4 header checksum",
    "IP_INHDR": "invalid IPv4 header (version, length or options)",
    "IP_RPFILTER": "reverse-path filter: the source is not reachable back through the receiving interface "
                   "(net.ipv4.conf.*.rp_filter)",
    "IP_NOPROTO": "no handler for this IP protocol",
    "IP_INADDRERRORS": "no route to deliver or forward the packet; often forwarding is off "
                       "(net.ipv4.ip_forward=0; for IPv6, in ip6_forward, net.ipv6.conf.all.forwarding=0) for a "
                       "packet that must be forwarded (e.g. after Docker DNAT)",
    "IP_INNOROUTES": "no route for the packet's destination",
    "IP_LOCAL_SOURCE": "the source address is one of this host's own addresses (spoofed or looped)",
    "IP_INVALID_SOURCE": "the source address is invalid (multicast, broadcast or zero)",
    "IP_LOCALNET": "a 127.0.0.0/8 address on a non-loopback interface (net.ipv4.conf.*.route_localnet=0)",
    "IP_INVALID_DEST": "the destination address is invalid (e.g. zero or loopback from outside)",
    "IP_OUTNOROUTES": "no route to send the packet out",
    "IP_TUNNEL_ECN": "an IP tunnel's ECN bits are inconsistent",
    "DUP_FRAG": "a duplicate IP fragment",
    "FRAG_REASM_TIMEOUT": "IP fragment reassembly timed out (a fragment was lost)",
    "FRAG_TOO_FAR": "an IP fragment is too far out of order (ipfrag_max_dist)",
    # TCP (those a SYN or a young connection can meet)
    "TCP_FLAGS": "invalid TCP flag combination for the connection's state",
    "TCP_ZEROWINDOW": "the receiver's window is zero",
    "TCP_OLD_DATA": "the data was already received (a duplicate)",
    "TCP_OVERWINDOW": "the data is beyond the receive window",
    "TCP_OFOMERGE": "out-of-order data merged into data already queued",
    "TCP_RFC7323_PAWS": "the timestamp is older than the last one seen (PAWS check)",
    "TCP_OLD_SEQUENCE": "an old sequence number (duplicate segment)",
    "TCP_INVALID_SEQUENCE": "the sequence number is outside the window",
    "TCP_INVALID_ACK_SEQUENCE": "the ACK number is not acceptable",
    "TCP_RESET": "a RST was received",
    "TCP_INVALID_SYN": "a SYN where none is allowed (in an established connection or with bad flags)",
    "TCP_CLOSE": "the connection is closed",
    "TCP_FASTOPEN": "TCP Fast Open data was not accepted",
    "TCP_OLD_ACK": "an ACK of data already acknowledged",
    "TCP_TOO_OLD_ACK": "an ACK far older than the data in flight",
    "TCP_ACK_UNSENT_DATA": "an ACK for data never sent",
    "TCP_OFO_QUEUE_PRUNE": "out-of-order queue pruned for memory",
    "TCP_OFO_DROP": "out-of-order segment dropped (no room)",
    "TCP_LISTEN_OVERFLOW": "the listening socket's accept queue is full (backlog; the server accepts too slowly)",
    "TCP_MD5NOTFOUND": "a TCP-MD5 signature was expected and missing",
    "TCP_MD5UNEXPECTED": "a TCP-MD5 signature arrived where none was configured",
    "TCP_MD5FAILURE": "a TCP-MD5 signature did not match",
    "TCP_MINTTL": "the TTL is below the socket's minimum (IP_MINTTL)",
    "TCP_ABORT_ON_DATA": "data arrived on a connection being aborted",
    # neighbours (ARP)
    "NEIGH_CREATEFAIL": "could not create a neighbour (ARP) entry (neighbour table full? gc_thresh)",
    "NEIGH_FAILED": "the next hop never answered ARP: the neighbour is unreachable",
    "NEIGH_QUEUEFULL": "too many packets waiting for an ARP answer (unres_qlen)",
    "NEIGH_DEAD": "the neighbour entry was removed",
    "NEIGH_HH_FILLFAIL": "could not build the link-layer header",
    # queueing disciplines
    "QDISC_DROP": "the queueing discipline dropped it (queue full)",
    "QDISC_OVERLIMIT": "the queueing discipline is over its limit (shaping/policing)",
    "QDISC_CONGESTED": "the queueing discipline dropped it for congestion (e.g. RED/CoDel)",
    "CAKE_FLOOD": "the CAKE qdisc dropped a flooding flow",
    "FQ_BAND_LIMIT": "the fq qdisc's band is full",
    "FQ_HORIZON_LIMIT": "the packet's departure time is beyond fq's horizon",
    "FQ_FLOW_LIMIT": "the fq qdisc's per-flow limit was hit",
    # added in recent kernels
    "TCP_RFC7323_TW_PAWS": "a TIME_WAIT socket rejected the timestamp (PAWS)",
    "TCP_RFC7323_PAWS_ACK": "the ACK's timestamp failed the PAWS check",
    "TCP_RFC7323_TSECR": "the echoed timestamp is invalid",
    "QDISC_EGRESS": "dropped by the egress queueing discipline (name used by 5.18-5.19 kernels)",
    # others seen on this kernel generation
    "TCP_INVALID_END_SEQUENCE": "the segment ends beyond the receive window",
    "TCP_AUTH_HDR": "a TCP authentication option is malformed",
    "TCP_AONOTFOUND": "a TCP-AO signature was expected and missing",
    "TCP_AOUNEXPECTED": "a TCP-AO signature arrived where none was configured",
    "TCP_AOKEYNOTFOUND": "no TCP-AO key matches",
    "TCP_AOFAILURE": "a TCP-AO signature did not match",
    "SKB_GSO_SEG": "segmenting a large (GSO) packet failed",
    "SKB_UCOPY_FAULT": "copying the packet from user space failed",
    "TAP_FILTER": "a tun/tap filter dropped it",
    "TAP_TXFILTER": "a tun/tap transmit filter dropped it",
    "UNIX_DISCONNECT": "a unix socket peer disconnected",
    "IPV6_BAD_EXTHDR": "an IPv6 extension header is invalid",
    "VXLAN_INVALID_HDR": "the VXLAN header is invalid",
    "VXLAN_VNI_NOT_FOUND": "no VXLAN device has this VNI",
}

# Names above that the running kernel may not have (added or removed in other versions). The unit test
# accepts these missing; any other name must exist in the running kernel's enum skb_drop_reason.
OTHER_KERNELS = frozenset({"QDISC_EGRESS"})

GENERIC = "the kernel's drop reason %s (see include/net/dropreason-core.h)"


def meaning(name):
    """The plain-words meaning of a reason name (with or without SKB_DROP_REASON_), with a fallback."""
    if name is None:
        return "no reason recorded"
    if name.startswith("SKB_DROP_REASON_"):
        name = name[len("SKB_DROP_REASON_"):]
    return MEANINGS.get(name, GENERIC % name)


# Kernels before 5.17 report no drop reason. The reason a site always gives where the kernel has them
# (function without compiler suffixes -> reason): what `drops` and `watch` show there, marked inferred.
# Sites with several reasons are not here (watch infers ip_error's from the journey's route lookup).
BY_SITE = {
    "nft_do_chain": "NETFILTER_DROP",
    "ipt_do_table": "NETFILTER_DROP",
    "nf_hook_slow": "NETFILTER_DROP",
    "tcp_v4_rcv": "NO_SOCKET",
    "tcp_v6_rcv": "NO_SOCKET",
    "__udp4_lib_rcv": "NO_SOCKET",
    "__udp6_lib_rcv": "NO_SOCKET",
    "neigh_invalidate": "NEIGH_FAILED",
    "__neigh_event_send": "NEIGH_QUEUEFULL",
    "skb_queue_purge": "QUEUE_PURGE",
}
UNKNOWN = "unknown"
