"""A container on a second Docker network cannot reach a published port: DOCKER-ISOLATION drops it.

With the userland proxy off (or with netavark), a container on network A that connects to a port
published by a container on network B (through the host's address) is DNATed in the kernel; the
packet is then forwarded from bridge A to bridge B, which the inter-network isolation chains drop.
Clients outside the host and on network B reach the port; clients on network A time out.
https://github.com/moby/moby/issues/38784  https://github.com/containers/netavark/issues/709
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/moby/moby/issues/38784"
FAMILY = 4
PROTO = "tcp"
STALL = False
CLIENT_A = "172.31.0.2"
# measured: nft_do_chain/NETFILTER_DROP in the host, one per SYN (the DROP rule's counter in
# DOCKER-ISOLATION-STAGE-2 moves; the DNAT in nat PREROUTING was applied before)
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP",
    "object": "the rule `-A DOCKER-ISOLATION-STAGE-2 -o <prefix>br -j DROP` (filter FORWARD, via"
              " DOCKER-ISOLATION-STAGE-1 for traffic in from <prefix>b2)",
    "right_if": ["DOCKER-ISOLATION-STAGE-2"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    n = ctx["n"]
    b_common.second_network(ctx, "client", "172.31.0.1", CLIENT_A)
    br, br2 = n["br"], n["br2"]
    common.sh(";".join([
        "iptables -N DOCKER-USER", "iptables -N DOCKER", "iptables -N DOCKER-ISOLATION-STAGE-1",
        "iptables -N DOCKER-ISOLATION-STAGE-2",
        "iptables -A FORWARD -j DOCKER-USER", "iptables -A FORWARD -j DOCKER-ISOLATION-STAGE-1"]
        + ["iptables -A FORWARD -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % b
           + " && iptables -A FORWARD -o %s -j DOCKER" % b
           + " && iptables -A FORWARD -i %s ! -o %s -j ACCEPT" % (b, b)
           + " && iptables -A FORWARD -i %s -o %s -j ACCEPT" % (b, b) for b in (br, br2)]
        + ["iptables -A DOCKER-ISOLATION-STAGE-1 -i %s ! -o %s -j DOCKER-ISOLATION-STAGE-2" % (b, b)
           for b in (br, br2)]
        + ["iptables -A DOCKER-ISOLATION-STAGE-2 -o %s -j DROP" % b for b in (br, br2)]
        + ["iptables -A DOCKER-ISOLATION-STAGE-1 -j RETURN", "iptables -A DOCKER-ISOLATION-STAGE-2 -j RETURN",
           "iptables -A DOCKER-USER -j RETURN",
           "iptables -A DOCKER -d %s/32 ! -i %s -o %s -p tcp --dport %d -j ACCEPT" % (common.CTR4, br, br,
                                                                                     common.CTR_PORT),
           "iptables -P FORWARD DROP"]), ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    """What users do (DOCKER-USER runs before the isolation chains): accept network A to the port,
    and the replies."""
    common.sh("iptables -I DOCKER-USER -i %s -o %s -d %s -p tcp --dport %d -j ACCEPT"
              " && iptables -I DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
              % (ctx["n"]["br2"], ctx["n"]["br"], common.CTR4, common.CTR_PORT), ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
