"""An IPv6 site behind a tunnel (MTU below 1500) that filters ICMPv6: connections open and small answers
arrive, large responses hang, because the server never learns of the smaller path MTU (IPv6 routers do not
fragment: they answer "packet too big", and the server's firewall drops it).
https://github.com/phpipam/phpipam/issues/2553 (site on an IPv6 tunnel blocks ICMPv6: MTU timeouts),
https://github.com/althea-net/rita/pull/691 (servers that block the ICMPv6 PMTUD needs),
https://github.com/openwrt/luci/pull/4485 (packet-too-big must not be dropped, RFC 4890)
Here: the host's outside link has MTU 1480 (a 6in4 tunnel); the container's ip6tables INPUT policy is
DROP and accepts ESTABLISHED but not RELATED, so the host's packet-too-big is dropped in the container.
"""
from blind import common

SOURCE = "https://github.com/phpipam/phpipam/issues/2553"
FAMILY = 6
PROTO = "tcp"
STALL = True
TRUTH = {
    "drop": "ip6_forward/PKT_TOO_BIG + nft_do_chain/NETFILTER_DROP",
    "object": "the container's ip6tables filter INPUT (policy DROP, ESTABLISHED accepted, RELATED not): "
              "it drops the ICMPv6 packet-too-big sent for the host's <prefix>o (MTU 1480)",
    "right_if": ["{out}", "INPUT"],
}
CTR_RULES = [
    "-P INPUT DROP",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -p icmpv6 --icmpv6-type neighbour-solicitation -j ACCEPT",
    "-A INPUT -p icmpv6 --icmpv6-type neighbour-advertisement -j ACCEPT",
    "-A INPUT -p icmpv6 --icmpv6-type echo-request -j ACCEPT",
    "-A INPUT -p tcp --dport 80 -j ACCEPT",
    "-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT",
]


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(6,), ctx=ctx)
    common.sh("ip link set %s mtu 1480" % ctx["n"]["out"], ns=ctx["host_netns"])
    for rule in CTR_RULES:
        common.sh("ip6tables " + rule, ns=ctx["n"]["ctr"])
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY, path="/big", want=common.BIG, timeout=3)


def fix(ctx):
    common.sh("ip6tables -I INPUT -m conntrack --ctstate RELATED -j ACCEPT", ns=ctx["n"]["ctr"])


def teardown(ctx):
    common.teardown(ctx)
