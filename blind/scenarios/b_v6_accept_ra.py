"""Enabling IPv6 forwarding for Docker makes the host ignore router advertisements: its RA default route goes.

Docker (with IPv6 on) sets net.ipv6.conf.all.forwarding=1; with accept_ra=1 (the default) the kernel
then treats the host as a router, drops the default route it had learned from router advertisements
and ignores the next ones.  Clients on other networks reach the published port, but the replies
have no route back; on-link clients still work.  The fix is accept_ra=2 on the uplink.
https://github.com/docker/for-linux/issues/1373  https://github.com/moby/moby/issues/43466
https://github.com/docker/for-linux/issues/844
"""
import time

from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/docker/for-linux/issues/1373"
FAMILY = 6
PROTO = "tcp"
STALL = False
REMOTE6 = "2001:db8:77::2"      # the client, one router away (the router's RAs are the host's only way back)
# measured: ip6_pkt_discard/IP_INNOROUTES in the host, for the container's SYN-ACKs (the route lookup
# for the client's address finds nothing once forwarding=1 purged the RA default route; the host's
# `ip -6 route` has no default); the client's SYNs are DNATed and delivered
TRUTH = {
    "drop": "ip6_pkt_discard/IP_INNOROUTES",
    "object": "net.ipv6.conf.<prefix>o.accept_ra = 1 (with forwarding = 1: router advertisements ignored,"
              " the RA-learned default route purged)",
    "right_if": ["accept_ra"],
}
RA_SENDER = r"""
import socket, struct, sys, time
ifindex = socket.if_nametoindex(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)   # router lifetime 1800 s, no prefix
while True:
    try:
        s.sendto(ra, ("ff02::1", 0, 0, ifindex))
    except OSError:
        pass                      # the link-local address may still be tentative
    time.sleep(1)
"""


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(6,), ctx=ctx)
    n, h = ctx["n"], ctx["host_netns"]
    common.sh("sysctl -qw net.ipv6.conf.all.forwarding=0", ns=h)          # before Docker's IPv6
    common.sh("ip -6 addr del %s/64 dev %s && ip -6 addr add %s/128 dev lo"
              " && ip -6 route add 2001:db8:51::/64 dev %s src %s && ip -6 route replace default via %s"
              % (common.CLIENT6, n["cveth"], REMOTE6, n["cveth"], REMOTE6, common.HOST6), ns=n["client"])
    b_common.spawn(ctx, "client", RA_SENDER, [n["cveth"]], "")
    if not _wait_default_route(h):
        raise RuntimeError("the host never learned its default route from the router advertisements")
    common.sh("sysctl -qw net.ipv6.conf.all.forwarding=1", ns=h)          # what dockerd does
    return ctx


def _wait_default_route(ns, seconds=8):
    end = time.time() + seconds
    while time.time() < end:
        if "proto ra" in common.sh("ip -6 route show default", ns=ns, check=False):
            return True
        time.sleep(0.3)
    return False


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("sysctl -qw net.ipv6.conf.%s.accept_ra=2" % ctx["n"]["out"], ns=ctx["host_netns"])
    _wait_default_route(ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
