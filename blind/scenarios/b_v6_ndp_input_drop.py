"""A host ip6tables INPUT policy DROP lets ICMPv6 in only on the uplink: the container's NDP answers die.

Users who close INPUT with a DROP policy and allow ICMPv6 only where they thought of it (the
uplink) lose IPv6 to their containers: the host's neighbour solicitations for the container go
out, the container's neighbour advertisements come back on the bridge and are dropped by INPUT, so
the DNATed IPv6 SYN never leaves the host.  IPv4 (ARP, not filtered by iptables) keeps working.
https://github.com/mailcow/mailcow-dockerized/issues/4237
https://github.com/geerlingguy/ansible-role-firewall/issues/113  https://github.com/moby/moby/issues/45460
"""
from blind.scenarios import b_common as c

SOURCE = "https://github.com/mailcow/mailcow-dockerized/issues/4237"
FAMILY = 6
PROTO = "tcp"
STALL = False
TRUTH = {
    "drop": "neigh_invalidate / NOT_SPECIFIED in the host for the SYN (measured: IPv6 frees it"
            " without a reason where IPv4 says NEIGH_FAILED); the container's"
            " neighbour advertisements are freed by nft_do_chain / NETFILTER_DROP in the host"
            " (ip6 filter INPUT, policy DROP)",
    "object": "ip6tables filter INPUT chain of the host: policy DROP, ICMPv6 accepted only on the uplink,"
              " not on the bridge (neighbour advertisements from the container dropped)",
    "right_if": ["INPUT", "icmpv6"],
}
BODY = b"hello from the container\n"


def build(prefix: str) -> dict:
    ctx = c.build_host(prefix, family=6)
    c.guarded(ctx, lambda: (c.http_server(ctx), _firewall(ctx)))
    return ctx


def _firewall(ctx) -> None:
    out = ctx["names"]["out_h"]
    c.sh("ip6tables -A INPUT -i lo -j ACCEPT"
         " && ip6tables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
         f" && ip6tables -A INPUT -i {out} -p icmpv6 -j ACCEPT"
         " && ip6tables -A INPUT -p tcp --dport 22 -j ACCEPT"
         " && ip6tables -P INPUT DROP", ctx["host_netns"])


def attempt(ctx) -> bool:
    return c.http_get(ctx["names"]["client"], f"http://[{c.HOST6}]:{ctx['port']}/index.html", BODY)


def fix(ctx) -> None:
    c.sh(f"ip6tables -I INPUT -i {ctx['names']['br']} -p icmpv6 -j ACCEPT", ctx["host_netns"])


def teardown(ctx) -> None:
    c.teardown_host(ctx)
