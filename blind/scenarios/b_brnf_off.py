"""bridge-nf-call-iptables is 0: a pod reaching a service whose backend is on the same bridge gets an un-NATed reply.

With a bridge CNI, a pod connecting to a service address is DNATed by the node to a pod on the same
bridge; the backend's reply is bridged straight back, and unless net.bridge.bridge-nf-call-iptables
is 1 it never meets conntrack, so its source is not translated back and the client rejects it.
Users see service access (often DNS to a CoreDNS on the same node) fail only node-locally.
https://github.com/kelseyhightower/kubernetes-the-hard-way/issues/561
https://github.com/kubernetes/kubernetes/issues/87426  https://github.com/kubernetes/kubernetes/issues/38802
"""
from blind.scenarios import b_common as c

SOURCE = "https://github.com/kelseyhightower/kubernetes-the-hard-way/issues/561"
FAMILY = 4
PROTO = "tcp"
STALL = False
SERVICE = "172.31.0.10"
CLIENT_POD = "172.30.0.3"
TRUTH = {
    "drop": "tcp_v4_rcv / NO_SOCKET in the client pod (measured: the SYN-ACK arrives from"
            " 172.30.0.2:80, not from the service address, and the client answers it with a RST)",
    "object": "net.bridge.bridge-nf-call-iptables = 0 in the host (node) namespace",
    "right_if": ["bridge-nf-call-iptables"],
}
BODY = b"hello from the container\n"


def build(prefix: str) -> dict:
    ctx = c.build_host(prefix, build_dnat=False)
    c.guarded(ctx, lambda: _node(ctx))
    return ctx


def _node(ctx) -> None:
    """kube-proxy's DNAT for the service, the client as a pod on the bridge, the sysctl at 0."""
    h = ctx["host_netns"]
    c.sh(f"iptables -t nat -A PREROUTING -d {SERVICE} -p tcp --dport {ctx['port']}"
         f" -j DNAT --to-destination {c.CTR4}:80 && iptables -A FORWARD -d {c.CTR4} -p tcp --dport 80 -j ACCEPT"
         " && sysctl -qw net.bridge.bridge-nf-call-iptables=0", h)
    c.attach_to_bridge(ctx, "client", CLIENT_POD)
    c.http_server(ctx)


def attempt(ctx) -> bool:
    return c.http_get(ctx["names"]["client"], f"http://{SERVICE}:{ctx['port']}/index.html", BODY)


def fix(ctx) -> None:
    c.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1", ctx["host_netns"])


def teardown(ctx) -> None:
    c.teardown_host(ctx)
