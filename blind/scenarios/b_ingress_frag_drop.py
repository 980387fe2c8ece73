"""A "hardening" netdev ingress rule drops IP fragments: large UDP requests to a container vanish.

Hardening guides and roles add a netdev-family ingress chain on the uplink that drops non-first IP
fragments (`ip frag-off & 0x1fff != 0 drop`).  Every UDP datagram bigger than the path MTU arrives
fragmented, so a published UDP service (DNS relays with large queries, SIP, RADIUS) answers small
requests and silently loses large ones; the drop happens before any iptables or ip/inet hook.
https://github.com/DNSCrypt/dnscrypt-proxy/issues/1449  https://github.com/ipr-cnrs/nftables/pull/26
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/DNSCrypt/dnscrypt-proxy/issues/1449"
FAMILY = 4
PROTO = "udp"
STALL = False
PAYLOAD = 2000          # above the client link's MTU: sent as two fragments
# measured: nft_do_chain/NETFILTER_DROP in the host, one per large datagram (its second fragment, at the
# netdev ingress hook, before conntrack's defragmentation); the first fragment waits in the
# reassembly queue until it expires (30 s, after the measurement); 1400-byte payloads pass
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP",
    "object": "the rule `ip frag-off & 0x1fff != 0 counter drop` in chain ingress of table netdev filter"
              " (hook ingress on <prefix>o, the host's uplink)",
    "right_if": ["netdev", "frag"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, server="udp", families=(4,), ctx=ctx)
    b_common.nft(ctx, "table netdev filter {\n chain ingress {\n  type filter hook ingress device \"%s\""
                      " priority -500; policy accept;\n  ip frag-off & 0x1fff != 0 counter drop\n }\n}\n"
                 % ctx["n"]["out"])
    return ctx


def attempt(ctx):
    return b_common.attempt_udp_sized(ctx, PAYLOAD)


def fix(ctx):
    common.sh("nft delete table netdev filter", ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
