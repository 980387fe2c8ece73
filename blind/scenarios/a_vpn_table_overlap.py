"""With `tailscale up --accept-routes`, a subnet another node advertises that overlaps a Docker bridge's
(172.17.1.0/24 there) is installed in Tailscale's own routing table 52, which an `ip rule` (priority
5270) consults before the main table: the host's packets for the container, DNATed ones included, go into
the VPN interface instead of the bridge, and the published port times out. Fixed by not advertising (or
not accepting) the overlapping subnet.
https://github.com/tailscale/tailscale/issues/12434
Here: a tun device that no process reads stands for tailscale0 (what is sent into it is lost to the host).
Measured: with no reader the tun has no carrier, so its qdisc stays noop and drops every packet:
__dev_queue_xmit with QDISC_DROP (not a full queue).
"""
from blind import common

SOURCE = "https://github.com/tailscale/tailscale/issues/12434"
FAMILY = 4
PROTO = "tcp"
STALL = False
TRUTH = {
    "drop": "__dev_queue_xmit/QDISC_DROP",
    "object": "route 172.30.0.0/24 dev <prefix>ts in table 52, reached by `ip rule 5270: from all lookup 52` "
              "before the main table's connected route of <prefix>br",
    "right_if": ["{tun}", "table 52|lookup 52"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    h = ctx["host_netns"]
    ctx["n"]["tun"] = prefix + "ts"
    common.sh("ip tuntap add mode tun name %sts && ip addr add 100.100.1.5/32 dev %sts && ip link set %sts up"
              % (prefix, prefix, prefix), ns=h)
    # the rules tailscaled installs, and the accepted route that overlaps the bridge's subnet
    common.sh("ip rule add pref 5210 fwmark 0x80000/0xff0000 lookup main", ns=h)
    common.sh("ip rule add pref 5270 lookup 52", ns=h)
    common.sh("ip route add 172.30.0.0/24 dev %sts table 52" % prefix, ns=h)
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("ip route del 172.30.0.0/24 dev %s table 52" % ctx["n"]["tun"], ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
