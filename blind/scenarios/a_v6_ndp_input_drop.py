"""A host firewall that denies everything coming in on one interface (ufw `deny in on IFACE`, or an
ip6tables INPUT rule meant to keep containers off the host's own services) also drops IPv6 neighbour
discovery, which is ICMPv6 and so passes through INPUT (ARP never does): the host can no longer resolve
its neighbours on that interface and IPv6 traffic to them dies, while IPv4 keeps working.
https://github.com/k3s-io/k3s/issues/9797 (ufw deny in on an interface drops neighbour solicitations),
https://github.com/moby/moby/issues/45460 (ip6tables rules break neighbor solicitation),
https://github.com/geerlingguy/ansible-role-firewall/issues/113 (a firewall role drops NDP)
"""
from blind import common

SOURCE = "https://github.com/k3s-io/k3s/issues/9797"
FAMILY = 6
PROTO = "udp"
STALL = False
TRUTH = {
    # measured: the datagram is freed by neigh_invalidate with NOT_SPECIFIED (IPv6's ndisc_error_report
    # frees without a reason, unlike ARP's NEIGH_FAILED), the advertisements by the INPUT rule
    "drop": "neigh_invalidate/NOT_SPECIFIED + nft_do_chain/NETFILTER_DROP",
    "object": "ip6tables filter INPUT rule `-i <prefix>br -j DROP` in the host (drops the container's "
              "neighbour advertisements)",
    "right_if": ["INPUT", "{br}", "neighbo"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, server="udp", families=(6,), ctx=ctx)
    common.sh("ip6tables -A INPUT -i %s -j DROP" % ctx["n"]["br"], ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_udp(ctx, FAMILY)


def fix(ctx):
    for kind in ("neighbour-advertisement", "neighbour-solicitation"):
        common.sh("ip6tables -I INPUT -i %s -p icmpv6 --icmpv6-type %s -j ACCEPT" % (ctx["n"]["br"], kind),
                  ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
