"""A UDP service answers from another of its IPv6 addresses than the one the DNAT sent the request to.

The published UDP port is DNATed to the container's service address (a second, deprecated address:
preferred_lft 0, as VIP managers add them); the server is bound to [::] and replies without
choosing its source, so the kernel picks the container's primary address.  Conntrack sees a new flow
instead of the reply, the answer is not translated back, and the client drops a datagram from an
address it never wrote to.
https://github.com/traccar/traccar/issues/5042  https://github.com/moby/moby/issues/15127
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/traccar/traccar/issues/5042"
FAMILY = 6
PROTO = "udp"
STALL = False
SERVICE6 = "2001:db8:30::53"
# measured: __udp6_lib_rcv/NO_SOCKET in the client, one per request (the answer arrives from
# [2001:db8:30::2]:80; the client's connected socket expects [2001:db8:51::1]:8080); the host's
# conntrack holds two UNREPLIED flows per request, the DNATed one and the answer as a new flow
TRUTH = {
    "drop": "__udp6_lib_rcv/NO_SOCKET",
    "object": "the container's UDP server on [::]:80 answering from 2001:db8:30::2 instead of %s, the"
              " address the DNAT targets (so the reply is a new conntrack flow, not un-NATed)" % SERVICE6,
    "right_if": [SERVICE6, "2001:db8:30::2"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, server="udp", families=(), ctx=ctx)
    common.sh("ip -6 addr add %s/64 dev eth0 nodad preferred_lft 0" % SERVICE6, ns=ctx["n"]["ctr"])
    common.sh("ip6tables -t nat -A PREROUTING -p udp --dport %d -j DNAT --to-destination [%s]:%d"
              % (common.PORT, SERVICE6, common.CTR_PORT), ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_udp(ctx, FAMILY)


def fix(ctx):
    """Bind the server to the service address, so that its answers leave from it."""
    b_common.stop_servers(ctx)
    b_common.spawn(ctx, "ctr", common.UDP_ECHO.replace('("::",', '("%s",' % SERVICE6), [str(common.CTR_PORT)],
                   "]:%d " % common.CTR_PORT)


def teardown(ctx):
    common.teardown(ctx)
