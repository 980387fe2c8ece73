"""A container attached to two networks publishes a UDP port on the first; its default gateway is on the
second. TCP answers keep the address the client reached, but a UDP server bound to 0.0.0.0 answers from
the address of the interface its reply leaves by, the other network's: conntrack does not recognise the
reply, so it is not un-DNATed but masqueraded, and the client's socket drops it ("reply from unexpected
source"). https://github.com/moby/moby/issues/21741 (a container on several bridge networks breaks its
published ports), https://github.com/moby/moby/issues/11998 (UDP answers from the wrong source address),
https://github.com/containers/podman/issues/25865 (which network's gateway a multi-network container uses)
"""
from blind import common

SOURCE = "https://github.com/moby/moby/issues/21741"
FAMILY = 4
PROTO = "udp"
STALL = False
NET2, GW2, CTR2 = "172.31.0.0/16", "172.31.0.1", "172.31.0.2"
TRUTH = {
    "drop": "__udp4_lib_rcv/NO_SOCKET",
    "object": "the container's default route via 172.31.0.1 dev eth1 (the second network): the echo leaves "
              "from 172.31.0.2, not the DNATed 172.30.0.2, and is masqueraded instead of un-DNATed",
    "right_if": ["eth1", "172.31.0."],       # the reply's interface and the second network (its gateway or address)
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, server="udp", families=(4,), ctx=ctx)
    n, h, k = ctx["n"], ctx["host_netns"], ctx["n"]["ctr"]
    n["br2"], n["port2"] = prefix + "b2", prefix + "q"
    common.sh("ip link add %s type bridge && ip addr add %s/16 dev %s && ip link set %s up"
              % (n["br2"], GW2, n["br2"], n["br2"]), ns=h)
    common.sh("ip link add %s netns %s type veth peer name eth1 netns %s" % (n["port2"], h, k))
    common.sh("ip link set %s master %s && ip link set %s up" % (n["port2"], n["br2"], n["port2"]), ns=h)
    common.sh("ip addr add %s/16 dev eth1 && ip link set eth1 up" % CTR2, ns=k)
    common.sh("ip route replace default via %s dev eth1" % GW2, ns=k)
    # Docker's masquerade of each network's outgoing traffic
    common.sh("iptables -t nat -A POSTROUTING -s 172.30.0.0/16 ! -o %s -j MASQUERADE" % n["br"], ns=h)
    common.sh("iptables -t nat -A POSTROUTING -s %s ! -o %s -j MASQUERADE" % (NET2, n["br2"]), ns=h)
    return ctx


def attempt(ctx):
    return common.attempt_udp(ctx, FAMILY)


def fix(ctx):
    # the published network's gateway as the default (Docker's gw-priority), so replies keep the address
    common.sh("ip route replace default via %s dev eth0" % common.BR4, ns=ctx["n"]["ctr"])
    common.sh("conntrack -D -p udp", ns=ctx["host_netns"], check=False)


def teardown(ctx):
    common.teardown(ctx)
