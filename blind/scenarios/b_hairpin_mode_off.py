"""A pod cannot reach itself through its service: hairpin mode is off on its bridge port.

A container (a pod through its service) that connects to the address that publishes it is DNATed
back to itself.  With bridge-nf-call-iptables on, that DNAT happens at the bridge, which must send
the frame back out of the port it came in by; a bridge does that only on ports with hairpin_mode=1
(what kubelet's --hairpin-mode=hairpin-veth and Docker without the userland proxy set).  The
hairpin MASQUERADE rule is there; the frames die in the bridge.
https://github.com/kubernetes/kubernetes/issues/20475 (the hairpin_mode check in bprashanth's comment)
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/kubernetes/kubernetes/issues/20475"
FAMILY = 4
PROTO = "tcp"
STALL = False
# measured: br_handle_frame_finish/NOT_SPECIFIED in the host, one per SYN: br_netfilter's PREROUTING
# DNATs the frame back to the container's MAC, the bridge may not forward it out of its ingress port
# (should_deliver) and frees it without a reason; no IP hook after PREROUTING sees it
TRUTH = {
    "drop": "br_handle_frame_finish/NOT_SPECIFIED",
    "object": "hairpin_mode = 0 on <prefix>p, the container's port on the bridge"
              " (/sys/class/net/<prefix>p/brport/hairpin_mode)",
    "right_if": ["hairpin", "{port}"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    common.sh("iptables -t nat -A POSTROUTING -s %s -d %s -p tcp --dport %d -j MASQUERADE"
              % (common.CTR4, common.CTR4, common.CTR_PORT), ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return b_common.attempt_tcp_to(ctx, common.HOST4, ns_key="ctr")


def fix(ctx):
    common.sh("ip link set %s type bridge_slave hairpin on" % ctx["n"]["port"], ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
