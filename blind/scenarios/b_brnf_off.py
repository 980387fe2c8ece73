"""bridge-nf-call-iptables is 0: a pod reaching a service whose backend is on the same bridge gets an un-NATed reply.

With a bridge CNI, a pod connecting to a service address is DNATed by the node to a pod on the same
bridge; the backend's reply is bridged straight back, and unless net.bridge.bridge-nf-call-iptables
is 1 it never meets conntrack, so its source is not translated back and the client rejects it.
Users see service access (often DNS to a CoreDNS on the same node) fail only node-locally.
https://github.com/kelseyhightower/kubernetes-the-hard-way/issues/561
https://github.com/kubernetes/kubernetes/issues/87426  https://github.com/kubernetes/kubernetes/issues/38802
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/kelseyhightower/kubernetes-the-hard-way/issues/561"
FAMILY = 4
PROTO = "tcp"
STALL = False
SERVICE = "172.31.0.10"
CLIENT_POD = "172.30.0.3"
# measured: tcp_v4_rcv/NO_SOCKET in the client pod (the SYN-ACK arrives from 172.30.0.2:80, not from
# the service address, and the client answers it with a RST)
TRUTH = {
    "drop": "tcp_v4_rcv/NO_SOCKET",
    "object": "net.bridge.bridge-nf-call-iptables = 0 in the host (node) namespace",
    "right_if": ["bridge-nf-call-iptables"],
}


def build(prefix):
    """The node: kube-proxy's DNAT of the service address, the client as a pod on the bridge."""
    ctx = {}
    common.docker_host(prefix, families=(), ctx=ctx)
    common.sh("iptables -t nat -A PREROUTING -d %s -p tcp --dport %d -j DNAT --to-destination %s:%d"
              " && sysctl -qw net.bridge.bridge-nf-call-iptables=0"
              % (SERVICE, common.PORT, common.CTR4, common.CTR_PORT), ns=ctx["host_netns"])
    b_common.attach_to_bridge(ctx, "client", CLIENT_POD)
    return ctx


def attempt(ctx):
    return b_common.attempt_tcp_to(ctx, SERVICE)


def fix(ctx):
    common.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1", ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
