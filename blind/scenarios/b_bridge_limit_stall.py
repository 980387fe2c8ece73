"""A per-device rate limiter in an nft `bridge` table drops most of the container's large response.

Users build per-MAC "QoS" with nft's bridge family (`table bridge dqos`, a prerouting chain with
`ether saddr MAC limit rate over N kbytes/second drop`); with N far too low (a unit slip) the
handshake, the request and small answers pass, and a download from the device stalls.  The drops are
at the bridge layer, before any IP hook: iptables and the ip/inet tables show nothing.
https://github.com/openwrt/openwrt/issues/14845
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/openwrt/openwrt/issues/14845"
FAMILY = 4
PROTO = "tcp"
STALL = True
# measured: nft_do_chain/NETFILTER_DROP in the host, about 60 per attempt (the container's GSO segments
# of the response, in the bridge family's prerouting hook; the rule's counter moves, no ip/inet/iptables
# counter does); the client's small GET passes
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP",
    "object": "the rule `ether saddr <container MAC> limit rate over 20 kbytes/second drop` in chain upload"
              " of table bridge dqos (hook prerouting of the bridge family, on <prefix>br)",
    "right_if": ["dqos", "limit"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    mac = common.sh("cat /sys/class/net/eth0/address", ns=ctx["n"]["ctr"]).strip()
    ctx["ctr_mac"] = mac
    rules = ("table bridge dqos {\n chain upload {\n  type filter hook prerouting priority 0; policy accept;\n"
             "  ether saddr %s limit rate over 20 kbytes/second counter drop\n }\n}\n" % mac)
    b_common.nft(ctx, rules)
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY, path="/big", want=common.BIG)


def fix(ctx):
    common.sh("nft delete table bridge dqos", ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
