"""systemd-networkd (since 219/220) switches IPv4 forwarding off on each interface it manages unless its
.network file says IPForward=yes: net.ipv4.ip_forward and conf.all.forwarding read 1, yet Docker's
published ports and container traffic stop working, because the outside interface's own
net.ipv4.conf.<if>.forwarding is 0.
https://github.com/moby/moby/issues/14185 (comment by cles), https://github.com/systemd/systemd/issues/468,
https://github.com/moby/moby/pull/15007
"""
from blind import common

SOURCE = "https://github.com/moby/moby/issues/14185"
FAMILY = 4
PROTO = "tcp"
STALL = False
TRUTH = {
    "drop": "ip_error/IP_INADDRERRORS",
    "object": "net.ipv4.conf.<prefix>o.forwarding (the outside interface), while net.ipv4.ip_forward=1",
    "right_if": ["conf.{out}.forwarding"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    # what networkd does to the interface it manages; the global switches stay on
    common.sh("sysctl -qw net.ipv4.conf.%s.forwarding=0" % ctx["n"]["out"], ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("sysctl -qw net.ipv4.conf.%s.forwarding=1" % ctx["n"]["out"], ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
