"""The lab's scenario catalogue, as data: what each scenario breaks and its ground truth.

The ground truth is what the tests hold `diagnose` to: the cause id it must name, and where the kernel
frees the packet (function, drop reason, and the namespace role where it happens: "host" is the namespace
that owns the published port, "container" the one behind the bridge). The drop sites were measured on the
development kernel (6.18, iptables-nft) with the classic skb:kfree_skb tracepoint; tests/test_lab.py
re-measures them on every run, so a kernel that drops elsewhere fails the test instead of lying.

The knobs (forwarding, forward_accept, ...) say how the scenario departs from the healthy topology;
each broken scenario changes exactly one of them.
"""
from __future__ import annotations

import dataclasses

from dnattrace.errors import UsageError


# Where kernels differ in the function that frees the same drop, for every scenario: Debian's 6.1 and
# 5.10 free a packet an nftables verdict refused in nf_hook_slow, 6.18 in nft_do_chain.
SAME_DROP = {"nft_do_chain": ("nf_hook_slow",)}


@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    description: str
    cause: str                      # the cause id diagnose must name ("none" when healthy)
    drop_function: str | None       # kfree_skb location symbol (without +offset)
    drop_reason: str | None         # skb_drop_reason name (without the SKB_DROP_REASON_ prefix)
    drop_ns: str | None             # "host", "container" or "client": where the packet is freed
    docker: bool = False            # has a --docker variant (real Docker engine)
    expect_ok: bool = False         # the client's request succeeds
    # How the host departs from the healthy Docker layout (one knob per broken scenario).
    forwarding: bool = True         # net.ipv4.ip_forward in the host namespace
    forward_accept: bool = True     # Docker's DOCKER-chain ACCEPT rule for the published container port
    server: bool = True             # a server listens on the container port
    rp_filter: bool = False         # strict rp_filter on the outside interface + asymmetric route back
    conntrack_full: bool = False    # the host namespace's conntrack table is full
    input_drop: bool = False        # target is a host process on :9090 behind a filter INPUT DROP rule
    dnat_target: str | None = None  # DNAT to this address instead of the container's (a missing host)
    drop_delay: float = 0.0         # seconds between the first packet and its drop (neighbour timeouts)
    # Where the client is (a layout, not a fault): "outside" (its own namespace), "host" (a process in
    # the host namespace connecting to the host's outside address), "localhost" (the same, to 127.0.0.1,
    # with the DNAT rules CNI portmap / netavark write for it), "sibling" (a second container on the same
# bridge connecting to the host's published address).
    client: str = "outside"
    proto: str = "tcp"              # "udp": a UDP echo service published on 5353 -> container :53
    bridge_up: bool = True          # the docker0-like bridge is up
    ctr_default_route: bool = True  # the container has its default route via the bridge
    reply_notrack: bool = False     # a raw PREROUTING NOTRACK rule catches the container's replies
    foreign_forward_drop: bool = False  # a native nft `table inet` forward chain with policy drop
    output_dnat: bool = True        # nat OUTPUT jumps to DOCKER (host-local clients get DNATed)
    route_localnet: bool = True     # net.ipv4.conf.BRIDGE.route_localnet=1 (localhost client layout)
    udp_stale: bool = False         # the client's UDP flow was tracked before the port was published
    # Layout, not a fault: the service answers GET /big with a large body in one write (a bulk download),
    # and the lab's traffic fetches all of it.
    large_response: bool = False
    pmtu_blackhole: bool = False    # smaller MTU on the host's outside link, ICMP "fragmentation needed" dropped
    reply_uplink: bool = False      # a second uplink and an `ip rule iif BRIDGE` sending the replies out of it
    ctr_port_up: bool = True        # the container's veth (its bridge port) is up
    hairpin: bool = True            # client "sibling" only: the DNAT also applies to traffic from the bridge
    dnat_other_iface: bool = False  # the DNAT rule is restricted (-i) to an interface the clients do not use
    foreign_forward_new_only: bool = False  # a native nft forward chain accepts new requests, not their replies
    prerouting_notrack: bool = False        # a raw PREROUTING NOTRACK rule for the published port's requests
    tc_ingress_drop: bool = False           # a tc BPF classifier on the outside link drops the published port
    owner_ruleset: str = ""                 # another owner's rules beside Docker's (topology.OWNER_RULESETS)
    # IPv6 (family 6): the host is dual-stack (IPv4 as above, plus IPv6 on the outside link and the bridge,
    # ip6tables laid out as Docker 20.10 with "ip6tables": true lays them out), and the client connects
    # over IPv6. The knobs below break only the IPv6 side; IPv4 stays healthy.
    family: int = 4
    forwarding6: bool = True        # net.ipv6.conf.all.forwarding in the host namespace
    forward_accept6: bool = True    # the ip6tables DOCKER-chain ACCEPT rule for the container port
    publish6: bool = True           # ip6tables rules at all (Docker without "ip6tables": true publishes IPv4 only)
    # other functions some kernels free the packet in for the same drop (SAME_DROP covers every scenario)
    drop_function_alt: tuple[str, ...] = ()
    drop_reason_alt: tuple[str, ...] = ()     # the reasons those other sites give (QUEUE_PURGE, ...)

    def drop_site_matches(self, location: str) -> bool:
        """Is `location` ("function+0xoff") this scenario's drop function? Compared without the compiler's
        suffixes: 6.1 drops in ip_rcv_finish_core.constprop.0+0x1ab."""
        from dnattrace.kernel.kallsyms import base_name
        return bool(self.drop_function) and base_name(location.split("+")[0]) in (
            self.drop_function, *self.drop_function_alt, *SAME_DROP.get(self.drop_function, ()))

    def to_dict(self):
        return {k: getattr(self, k) for k in ("id", "description", "cause", "drop_function", "drop_reason",
                                              "drop_ns", "docker", "expect_ok", "family")}


SCENARIOS = [
    Scenario("healthy", "Docker-style host, published port 8080 -> container :80; the request succeeds.",
             cause="none", drop_function=None, drop_reason=None, drop_ns=None, docker=True, expect_ok=True),
    Scenario("forwarding-off", "IPv4 forwarding is off on the host: the DNATed SYN cannot be forwarded.",
             cause="forwarding-off", drop_function="ip_error", drop_reason="IP_INADDRERRORS", drop_ns="host",
             docker=True, forwarding=False),
    Scenario("forward-policy-drop", "filter FORWARD policy DROP and Docker's ACCEPT rule for the container "
             "is missing (--docker: a DOCKER-USER rule drops the container's traffic).", cause="filter-forward-drop", drop_function="nft_do_chain",
             drop_reason="NETFILTER_DROP", drop_ns="host", forward_accept=False, docker=True),
    Scenario("no-listener", "The DNAT is right but nothing listens on the container port (RST).",
             cause="no-listener", drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="container",
             server=False),
    Scenario("rp-filter", "Strict rp_filter on the host's outside interface; the route back to the client "
             "leaves by another interface.", cause="rp-filter", drop_function="ip_rcv_finish_core",
             drop_reason="IP_RPFILTER", drop_ns="host", rp_filter=True),
    Scenario("conntrack-full", "The host's conntrack table is full: new connections cannot be tracked.",
             cause="conntrack-full", drop_function="nf_hook_slow", drop_reason="NETFILTER_DROP",
             drop_ns="host", conntrack_full=True),
    Scenario("input-drop", "A port published by a host process (:9090, no DNAT) is blocked by a filter "
             "INPUT DROP rule.", cause="filter-input-drop", drop_function="nft_do_chain",
             drop_reason="NETFILTER_DROP", drop_ns="host", input_drop=True),
    Scenario("neigh-failed", "The DNAT points at an address nobody has on the bridge (a stale container "
             "IP): ARP fails.", cause="neigh-failed", drop_function="neigh_invalidate",
             drop_reason="NEIGH_FAILED", drop_ns="host", dnat_target="172.31.0.9", drop_delay=3.5),
]

# Scenarios from researched user reports; each cites its public source.
SCENARIOS += [
    Scenario("bridge-down", "The docker0-like bridge is administratively down, so its connected route is "
             "gone and the host answers the client with net-unreachable "
             "(https://github.com/wukongdaily/OrangePiShell/issues/18, "
             "https://github.com/docker/for-linux/issues/924).", cause="link-down",
             drop_function="ip_error", drop_reason="IP_INNOROUTES", drop_ns="host", bridge_up=False),
    Scenario("ctr-no-default-route", "The container has no default route: the SYN is delivered but its "
             "SYN-ACK cannot be routed and is never built (https://github.com/intel/cc-oci-runtime/issues/55, "
             "https://github.com/hyperhq/hyperd/issues/491).", cause="reply-no-route", drop_function=None,
             drop_reason=None, drop_ns=None, ctr_default_route=False),
    Scenario("notrack-reply", "A raw PREROUTING NOTRACK rule catches the container's replies, so they are "
             "not un-DNATed and the client drops the SYN-ACK from the container's own address "
             "(https://github.com/kubernetes/kubernetes/issues/84230, https://github.com/moby/moby/pull/44742).",
             cause="reply-notrack", drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="client",
             reply_notrack=True),
    Scenario("nft-inet-forward-drop", "A native nft table (`table inet filter`, as nftables.service or "
             "firewalld install) has a forward chain with policy drop; Docker's iptables rules accept the SYN, "
             "the other base chain on the same hook drops it (https://github.com/firewalld/firewalld/issues/534, "
             "https://github.com/moby/libnetwork/issues/2496).", cause="foreign-nft-drop",
             drop_function="nft_do_chain", drop_reason="NETFILTER_DROP", drop_ns="host",
             foreign_forward_drop=True),
    Scenario("udp-stale-conntrack", "The client's UDP flow was tracked before the port was published; nat "
             "rules see only a flow's first packet, so the datagrams keep going to the host itself "
             "(https://github.com/moby/moby/issues/8795, https://github.com/moby/moby/pull/44742).",
             cause="udp-stale-conntrack", drop_function="__udp4_lib_rcv", drop_reason="NO_SOCKET",
             drop_ns="host", proto="udp", udp_stale=True),
    Scenario("hostlocal-prerouting-only", "A client on the host itself: the DNAT is reached only from "
             "PREROUTING (nat OUTPUT does not jump to DOCKER), so the host's own connection is refused "
             "(https://github.com/rancher/rancher/issues/2929, https://github.com/rkt/rkt/issues/1932).",
             cause="not-dnated", drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="host",
             client="host", output_dnat=False),
    Scenario("localhost-route-localnet", "A client on the host connects to 127.0.0.1:8080, DNATed to the "
             "container (CNI portmap layout) with route_localnet=0 on the bridge: the re-route after DNAT "
             "fails (https://github.com/rkt/rkt/issues/2283, https://github.com/containers/netavark/issues/362).",
             cause="route-localnet", drop_function="nf_hook_slow", drop_reason="NETFILTER_DROP", drop_ns="host",
             client="localhost", route_localnet=False),
]

# Decision replay and below-IP drops: a published port's packet that conntrack did not track (so NAT never
# saw it), and a tc BPF classifier dropping before IP.
SCENARIOS += [
    Scenario("prerouting-notrack", "A blanket raw PREROUTING NOTRACK rule (the kind written to spare conntrack "
             "on a busy port) also catches the published port: conntrack skips the SYN, so the DNAT never "
             "rewrites it and the host itself refuses it (https://github.com/openwrt/firewall4/issues/14, "
             "https://github.com/puppetlabs/puppetlabs-firewall/pull/372).", cause="nat-skipped",
             drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="host", prerouting_notrack=True),
    Scenario("tc-ingress-drop", "A tc BPF classifier on the host's outside link (a host firewall's or a CNI's "
             "datapath) drops TCP to the published port before IP sees it "
             "(https://github.com/cilium/cilium/issues/3731, https://github.com/projectcalico/calico/issues/5358).",
             cause="bpf-prog-drop", drop_function="__netif_receive_skb_core", drop_reason="TC_INGRESS", drop_ns="host",
             drop_reason_alt=("NOT_SPECIFIED", ""), tc_ingress_drop=True),
]

# Rules another owner writes beside Docker's on the same hooks: which chain and rule dropped the packet,
# and the fix in that owner's language (evidence/attribution.py).
SCENARIOS += [
    Scenario("firewalld-forward-reject", "firewalld (nftables backend) beside Docker: its forward chain, at "
             "priority filter + 10, ends in `reject with icmpx admin-prohibited` for traffic to a bridge in no "
             "trusted zone, though Docker's iptables rules accept it (https://github.com/moby/libnetwork/issues/2496, "
             "https://github.com/firewalld/firewalld/issues/534).", cause="chain-drop",
             drop_function="nft_do_chain", drop_reason="NETFILTER_DROP", drop_ns="host", owner_ruleset="firewalld"),
    Scenario("legacy-forward-drop", "An iptables-legacy FORWARD DROP rule (a tool or container shipping legacy "
             "iptables) beside Docker's iptables-nft rules: `iptables -S` does not show it, yet it drops "
             "(https://github.com/moby/libnetwork/issues/2331, https://github.com/docker-library/docker/issues/467).",
             cause="chain-drop", drop_function="nf_hook_slow", drop_reason="NETFILTER_DROP", drop_ns="host",
             drop_function_alt=("ipt_do_table", "nft_do_chain"), owner_ruleset="legacy"),
    Scenario("raw-prerouting-drop", "A drop in a raw-priority prerouting chain (a host firewall's early "
             "filter, before conntrack and Docker's DNAT, where DOCKER-USER cannot let anything by), its rule "
             "without a counter (https://github.com/docker/docs/pull/25760, "
             "https://github.com/QubesOS/qubes-issues/issues/5339).",
             cause="chain-drop", drop_function="nft_do_chain", drop_reason="NETFILTER_DROP", drop_ns="host",
             owner_ruleset="raw"),
    Scenario("netdev-ingress-drop", "A netdev-family ingress chain on the host's outside link drops the "
             "published port before any IP hook, as early-drop hardening and ban lists do "
             "(https://github.com/fail2ban/fail2ban/issues/3792, https://github.com/ipr-cnrs/nftables/pull/26).",
             cause="chain-drop",
             drop_function="nft_do_chain", drop_reason="NETFILTER_DROP", drop_ns="host", owner_ruleset="ingress"),
]

# More from user reports: a fault after the handshake, reply-path failures, and drop
# signatures shared with the scenarios above (the tests prove they are told apart).
SCENARIOS += [
    Scenario("mtu-pmtud-blackhole", "The host's outside link has a smaller MTU (1400) and ICMP \"fragmentation "
             "needed\" is filtered: the handshake and the request work, the large response stalls "
             "(https://github.com/moby/moby/issues/20178, https://github.com/moby/moby/issues/22028).",
             cause="pmtu-blackhole", drop_function="ip_forward", drop_reason="PKT_TOO_BIG", drop_ns="host",
             large_response=True, pmtu_blackhole=True),
    Scenario("reply-policy-route", "A second uplink and a policy rule for traffic from the bridge (as VPN / "
             "exit-node tools install) send the container's replies out of another interface than the requests "
             "came in by; its gateway does not answer ARP (https://github.com/moby/moby/issues/35251, "
             "https://github.com/tailscale/tailscale/issues/9164).", cause="reply-policy-route",
             drop_function="neigh_invalidate", drop_reason="NEIGH_FAILED", drop_ns="host", reply_uplink=True,
             drop_delay=3.5),
    Scenario("bridge-port-down", "The container's veth (its port on the docker0-like bridge) is down: ARP for "
             "the container fails (https://github.com/coreos/bugs/issues/122, "
             "https://github.com/wukongdaily/OrangePiShell/issues/18).", cause="bridge-port-down",
             drop_function="neigh_invalidate", drop_reason="NEIGH_FAILED", drop_ns="host", ctr_port_up=False,
             drop_delay=3.5,
             drop_function_alt=("neigh_destroy",), drop_reason_alt=("QUEUE_PURGE",)),
    Scenario("ctr-to-published-no-hairpin", "A second container on the bridge connects to the "
             "host's published address; the DNAT rule excludes traffic from the bridge (`! -i BRIDGE`, the layout "
             "that expects Docker's userland proxy) and no proxy listens, so the host refuses it "
             "(https://github.com/moby/moby/issues/40518, https://github.com/moby/moby/issues/38784).",
             cause="no-hairpin-dnat", drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="host",
             client="sibling", hairpin=False),
    Scenario("dnat-wrong-iface", "The DNAT rule is restricted to an input interface the clients do not come in "
             "by (a renamed or other NIC), so their SYNs reach the host itself, where nothing listens "
             "(https://github.com/canonical/lxd/issues/1102, "
             "https://github.com/SierraSoftworks/tailscale-unifi/issues/104).", cause="not-dnated",
             drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="host", dnat_other_iface=True),
    Scenario("nft-forward-no-established", "A native nft `table inet filter` forward chain (policy drop) accepts "
             "new connections to the container but has no established/related accept: the SYN passes, the "
             "SYN-ACK is dropped (https://unix.stackexchange.com/questions/657545/nftables-whitelisting-docker, "
             "https://github.com/greenpau/cni-plugins/issues/12).", cause="foreign-nft-reply-drop",
             drop_function="nft_do_chain", drop_reason="NETFILTER_DROP", drop_ns="host",
             foreign_forward_new_only=True),
    # IPv6. Ground truth measured on 6.18 with watch (tests/test_ipv6.py re-measures it):
    Scenario("v6-healthy", "Dual-stack Docker-style host (ip6tables DNAT [2001:db8:1::1]:8080 -> "
             "[2001:db8:2::2]:80 beside the IPv4 rules); the client connects over IPv6 and the request succeeds.",
             cause="none", drop_function=None, drop_reason=None, drop_ns=None, docker=True, expect_ok=True,
             family=6),
    Scenario("v6-forwarding-off", "IPv6 forwarding is off on the host (net.ipv6.conf.all.forwarding=0) while "
             "IPv4 forwarding is on: IPv4 clients get through, the IPv6 client's DNATed SYN is routed to the "
             "bridge and then refused by ip6_forward, which drops it with IP_INADDRERRORS (measured: the route "
             "lookup succeeds, table 254 -> the bridge; the drop is in the host, after PREROUTING, before "
             "FORWARD).", cause="forwarding-off",
             drop_function="ip6_forward", drop_reason="IP_INADDRERRORS", drop_ns="host", docker=True, family=6,
             forwarding6=False),
    Scenario("v6-forward-drop", "ip6tables' FORWARD chain (policy DROP, as Docker leaves it) has no ACCEPT for "
             "the container's IPv6 address while iptables accepts the IPv4 twin: the IPv6 SYN is dropped by the "
             "policy (nft_do_chain, NETFILTER_DROP, in the host's ip6 filter table).",
             cause="filter-forward-drop", drop_function="nft_do_chain", drop_reason="NETFILTER_DROP",
             drop_ns="host", family=6, forward_accept6=False),
    Scenario("v6-not-published", "The port is published on IPv4 only (Docker without ip6tables, the default "
             "before 27): the IPv6 client's SYN to the host's IPv6 address is not DNATed and reaches the host "
             "itself, where nothing listens (tcp_v6_rcv, NO_SOCKET); over IPv4 the same port works "
             "(https://github.com/moby/moby/issues/2174).", cause="family-not-published",
             drop_function="tcp_v6_rcv", drop_reason="NO_SOCKET", drop_ns="host", family=6, publish6=False),
]

BY_ID = {s.id: s for s in SCENARIOS}


def get(scenario_id):
    """The scenario named `scenario_id`; a UsageError naming the known ones otherwise."""
    try:
        return BY_ID[scenario_id]
    except KeyError:
        raise UsageError("unknown lab scenario %r; known: %s" % (scenario_id, ", ".join(BY_ID))) from None
