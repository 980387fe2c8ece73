"""The container's eth0 has a smaller MTU (an overlay's 1402) than the host's end of its veth (1500).

Small UDP requests work; a datagram that fits the host's side but not the container's (here a
1419-byte packet, as in the report's SNMP answer) is dropped by the veth on its way into the
container, without an ICMP error, so the client just times out.  Forcing the host's veth to the
container's MTU fixed it for the reporter.
https://github.com/rancher/rancher/issues/10498  https://github.com/moby/moby/pull/4282
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/rancher/rancher/issues/10498"
FAMILY = 4
PROTO = "udp"
STALL = False
CTR_MTU = 1402
PAYLOAD = 1391          # + 8 UDP + 20 IP = 1419 bytes, as in the report
# measured: __dev_forward_skb2/NOT_SPECIFIED in the host, one per large datagram: veth's transmit
# checks the length against the peer's (the container's eth0) MTU and frees the packet without a
# reason; no ICMP goes back.  1300-byte payloads pass.  After the fix the first large datagram draws
# an ICMP "fragmentation needed" (the bridge follows its port down to 1402), the next ones pass.
TRUTH = {
    "drop": "__dev_forward_skb2/NOT_SPECIFIED",
    "object": "the MTU of the container's eth0 (1402) below that of <prefix>p, the host's end of its veth"
              " (1500)",
    "right_if": ["mtu", "1402"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, server="udp", families=(4,), ctx=ctx)
    common.sh("ip link set eth0 mtu %d" % CTR_MTU, ns=ctx["n"]["ctr"])
    return ctx


def attempt(ctx):
    return b_common.attempt_udp_sized(ctx, PAYLOAD)


def fix(ctx):
    common.sh("ip link set %s mtu %d" % (ctx["n"]["port"], CTR_MTU), ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
