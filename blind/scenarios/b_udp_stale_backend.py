"""A UDP service's container was recreated with a new address; the client's flow stays pinned to the old one.

Users of UDP host ports (statsd/datadog agents, DNS) report a traffic black hole after the server
container or pod is recreated: the client keeps sending from the same source port, the conntrack
entry made before the restart keeps DNATing to the old address, and the new DNAT rule is never
consulted.  https://github.com/kubernetes/kubernetes/issues/66651
https://github.com/containernetworking/plugins/issues/123  https://github.com/moby/moby/issues/8795
"""
import time

from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/kubernetes/kubernetes/issues/66651"
FAMILY = 4
PROTO = "udp"
STALL = False
OLD_CTR = "172.30.0.3"
SPORT = 40053
# measured: neigh_invalidate/NEIGH_FAILED in the host (it ARPs on the bridge for the old address
# 172.30.0.3, which nobody has any more), one per datagram queued behind the failed resolution
TRUTH = {
    "drop": "neigh_invalidate/NEIGH_FAILED",
    "object": "the host's conntrack entry udp %s:%d -> %s:%d whose reply side is still %s:%d (the old"
              " container) while the nat rule now says %s:%d" % (common.CLIENT4, SPORT, common.HOST4,
                                                                   common.PORT, OLD_CTR, common.CTR_PORT,
                                                                   common.CTR4, common.CTR_PORT),
    "right_if": ["conntrack", OLD_CTR],
}


def build(prefix):
    """The old container (OLD_CTR) answers the client; then it is recreated: new veth, new address,
    the DNAT rule rewritten to it, the server started again.  The client's flow is not touched."""
    ctx = {}
    common.docker_host(prefix, server="udp", families=(), ctx=ctx)
    h, k = ctx["host_netns"], ctx["n"]["ctr"]
    common.sh("ip addr flush dev eth0 && ip addr add %s/16 dev eth0 && ip route add default via %s"
              % (OLD_CTR, common.BR4), ns=k)
    common.sh("iptables -t nat -A PREROUTING -p udp --dport %d -j DNAT --to-destination %s:%d"
              % (common.PORT, OLD_CTR, common.CTR_PORT), ns=h)
    if not attempt(ctx):
        raise RuntimeError("the old container did not answer before its restart")
    b_common.stop_servers(ctx)
    b_common.recreate_ctr_link(ctx, common.CTR4)
    common.sh("iptables -t nat -R PREROUTING 1 -p udp --dport %d -j DNAT --to-destination %s:%d"
              % (common.PORT, common.CTR4, common.CTR_PORT), ns=h)
    common.start_server(ctx, "udp")
    return ctx


def attempt(ctx):
    return b_common.attempt_udp_from(ctx, SPORT)


def fix(ctx):
    """What CNI portmap and kube-proxy learned to do: delete the port's UDP entries."""
    common.sh("conntrack -D -p udp --orig-port-dst %d" % ctx["port"], ns=ctx["host_netns"], check=False)
    time.sleep(0.2)


def teardown(ctx):
    common.teardown(ctx)
