"""docker0 stays up but loses its IPv4 address (NetworkManager, systemd-networkd or a WAN reconnect
reconfiguring interfaces it should leave alone): containers keep running, but nothing reaches them or
leaves them. With the address goes the bridge's connected route, so the host routes the DNATed packets
for the container by its default route instead, out of the interface they came in by.
https://github.com/moby/moby/issues/40217 (docker0 keeps losing its IPv4 address),
https://github.com/moby/moby/issues/38942, https://github.com/moby/moby/issues/40572 (systemd-networkd)
"""
from blind import common

SOURCE = "https://github.com/moby/moby/issues/40217"
FAMILY = 4
PROTO = "tcp"
STALL = False
GATEWAY = "198.51.100.254"      # the host's upstream router (absent here, as the real one has no route back)
TRUTH = {
    "drop": "neigh_invalidate/NEIGH_FAILED",
    "object": "the address 172.30.0.1/16 missing from the bridge <prefix>br (its connected route gone: the "
              "DNATed SYN follows the default route out of <prefix>o)",
    "right_if": ["{br}", common.BR4],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    h, br = ctx["host_netns"], ctx["n"]["br"]
    common.sh("ip route add default via %s dev %s" % (GATEWAY, ctx["n"]["out"]), ns=h)
    common.sh("ip addr del %s/16 dev %s" % (common.BR4, br), ns=h)
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("ip addr add %s/16 dev %s" % (common.BR4, ctx["n"]["br"]), ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
