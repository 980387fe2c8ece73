"""firewalld's IPv6_rpfilter (on by default) is not a sysctl: it is an nft rule in `table inet firewalld`,
chain filter_PREROUTING, `meta nfproto ipv6 fib saddr . mark . iif oif missing drop`. On a host whose
route back to a client leaves by another interface than the client's packets came in by (two uplinks, a
VPN that owns the return route), every IPv6 packet from that client is dropped before Docker's rules are
even reached; IPv4 works, and net.ipv*.conf.*.rp_filter says nothing.
https://github.com/moby/moby/issues/49680 (firewalld's filter_PREROUTING fib rule drops Docker's IPv6),
https://github.com/firewalld/firewalld/issues/1203, https://github.com/firewalld/firewalld/issues/1508
"""
from blind import common

SOURCE = "https://github.com/moby/moby/issues/49680"
FAMILY = 6
PROTO = "tcp"
STALL = False
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP",
    "object": "nft table inet firewalld, chain filter_PREROUTING: `fib saddr . mark . iif oif missing drop` "
              "(strict IPv6 reverse-path filter; the route to the client's 2001:db8:77::/64 leaves by <prefix>e)",
    "right_if": ["firewalld", "filter_PREROUTING"],
}
CLIENT_SRC = "2001:db8:77::2"          # the client's address in its own network, beyond the host's links
RULESET = """
table inet firewalld {
    chain filter_PREROUTING {
        type filter hook prerouting priority filter + 10; policy accept;
        icmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
        meta nfproto ipv6 fib saddr . mark %s oif missing drop
    }
}
"""


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(6,), ctx=ctx)
    n, h, c = ctx["n"], ctx["host_netns"], ctx["n"]["client"]
    ctx["n"]["b_host"], ctx["n"]["b_client"] = prefix + "e", prefix + "d"
    # a second link between the client's network and the host: the host's route back to the client's
    # network uses it (the return path of a second uplink or a VPN)
    common.sh("ip link add %s netns %s type veth peer name %s netns %s" % (prefix + "d", c, prefix + "e", h))
    common.sh("ip addr add 2001:db8:52::2/64 dev %sd nodad && ip link set %sd up" % (prefix, prefix), ns=c)
    common.sh("ip addr add %s/128 dev lo" % CLIENT_SRC, ns=c)
    common.sh("ip addr add 2001:db8:52::1/64 dev %se nodad && ip link set %se up" % (prefix, prefix), ns=h)
    common.sh("ip -6 route add 2001:db8:77::/64 via 2001:db8:52::2 dev %se" % prefix, ns=h)
    common.sh("nft -f - <<'EOF'\n%s\nEOF" % (RULESET % ". iif"), ns=h)
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY, src=CLIENT_SRC)


def fix(ctx):
    # firewalld's IPv6_rpfilter=loose: any route back, whatever its interface, is enough
    common.sh("nft flush chain inet firewalld filter_PREROUTING", ns=ctx["host_netns"])
    common.sh("nft -f - <<'EOF'\n%s\nEOF" % (RULESET % ""), ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
