"""A token-bucket shaper on the host's uplink whose burst is smaller than one full-sized frame.

A tbf whose bucket (burst) cannot hold one MTU-sized frame drops every full-sized packet, GSO or not,
while small ones (the handshake, the request, the response headers) pass: connections open, small
answers work, large responses stall.  Users hit it with burst computed in bits where tc wants bytes
(the CNI bandwidth plugin's bug) or with shaper scripts that size the bucket below the frames the
kernel really sends.
https://github.com/containernetworking/plugins/pull/169  https://github.com/tohojo/sqm-scripts/pull/73
"""
from blind import common

SOURCE = "https://github.com/containernetworking/plugins/pull/169"
FAMILY = 4
PROTO = "tcp"
STALL = True
# measured: __dev_queue_xmit/QDISC_DROP in the host, about 15 per attempt (every full-sized segment and
# its retransmissions; tc -s shows them as the tbf's "dropped"); the handshake, the request and a
# small GET pass
TRUTH = {
    "drop": "__dev_queue_xmit/QDISC_DROP",
    "object": "the root tbf qdisc on <prefix>o (the host's uplink) with burst 1000 bytes, below one full-sized"
              " frame (1514 bytes)",
    "right_if": ["tbf", "{out}"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    common.sh("tc qdisc add dev %s root tbf rate 50mbit burst 1000 latency 50ms" % ctx["n"]["out"],
              ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY, path="/big", want=common.BIG)


def fix(ctx):
    common.sh("tc qdisc replace dev %s root tbf rate 50mbit burst 64kb latency 50ms" % ctx["n"]["out"],
              ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
