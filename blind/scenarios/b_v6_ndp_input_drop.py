"""A host ip6tables INPUT policy DROP lets ICMPv6 in only on the uplink: the container's NDP answers die.

Users who close INPUT with a DROP policy and allow ICMPv6 only where they thought of it (the
uplink) lose IPv6 to their containers: the host's neighbour solicitations for the container go
out, the container's neighbour advertisements come back on the bridge and are dropped by INPUT, so
the DNATed IPv6 SYN never leaves the host.  IPv4 (ARP, not filtered by iptables) keeps working.
https://github.com/mailcow/mailcow-dockerized/issues/4237
https://github.com/geerlingguy/ansible-role-firewall/issues/113  https://github.com/moby/moby/issues/45460
"""
from blind import common

SOURCE = "https://github.com/mailcow/mailcow-dockerized/issues/4237"
FAMILY = 6
PROTO = "tcp"
STALL = False
# measured: in the host, nft_do_chain/NETFILTER_DROP (the container's neighbour advertisements, in
# ip6 filter INPUT by its DROP policy) and neigh_invalidate/NOT_SPECIFIED (the SYNs queued behind the
# failed resolution: IPv6 frees them without a reason where IPv4 says NEIGH_FAILED)
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP or neigh_invalidate/NOT_SPECIFIED",
    "object": "ip6tables filter INPUT chain of the host: policy DROP, ICMPv6 accepted only on the uplink,"
              " not on the bridge (neighbour advertisements from the container dropped)",
    "right_if": ["INPUT", "icmpv6"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(6,), ctx=ctx)
    _firewall(ctx)
    return ctx


def _firewall(ctx):
    """A host firewall: INPUT closed, established traffic, loopback, ICMPv6 on the uplink, ssh."""
    out = ctx["n"]["out"]
    common.sh("ip6tables -A INPUT -i lo -j ACCEPT"
         " && ip6tables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
         f" && ip6tables -A INPUT -i {out} -p icmpv6 -j ACCEPT"
         " && ip6tables -A INPUT -p tcp --dport 22 -j ACCEPT"
         " && ip6tables -P INPUT DROP", ns=ctx["host_netns"])


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("ip6tables -I INPUT -i %s -p icmpv6 -j ACCEPT" % ctx["n"]["br"], ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
