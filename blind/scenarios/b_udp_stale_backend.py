"""A UDP service's container was recreated with a new address; the client's flow stays pinned to the old one.

Users of UDP host ports (statsd/datadog agents, DNS) report a traffic black hole after the server
container or pod is recreated: the client keeps sending from the same source port, the conntrack
entry made before the restart keeps DNATing to the old address, and the new DNAT rule is never
consulted.  https://github.com/kubernetes/kubernetes/issues/66651
https://github.com/containernetworking/plugins/issues/123  https://github.com/moby/moby/issues/8795
"""
import subprocess
import time

from blind.scenarios import b_common as c

SOURCE = "https://github.com/kubernetes/kubernetes/issues/66651"
FAMILY = 4
PROTO = "udp"
STALL = False
OLD_CTR = "172.30.0.3"
SPORT = 40053
TRUTH = {
    "drop": "neigh_invalidate / NEIGH_FAILED in the host (measured: the host ARPs for the old"
            " address 172.30.0.3 on the bridge; nobody answers)",
    "object": f"the conntrack entry udp {c.CLIENT4}:{SPORT} -> {c.HOST4}:8053 whose reply side is"
              f" still {OLD_CTR}:53 (the old container), while the nat rule now says {c.CTR4}:53",
    "right_if": ["conntrack", OLD_CTR],
}
ECHO = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',53))\n"
        "while True:\n d,a=s.recvfrom(2048)\n s.sendto(b'answer:'+d,a)\n")
QUERY = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',%d))\n"
         "s.settimeout(%s)\ns.sendto(b'q1',('%s',%d))\n"
         "try:\n sys.exit(0 if s.recv(2048)==b'answer:q1' else 1)\nexcept OSError:\n sys.exit(1)\n")


def build(prefix: str) -> dict:
    ctx = c.build_host(prefix, port=8053, ctr_port=53, proto="udp", build_dnat=False)
    c.guarded(ctx, lambda: _before_and_after_restart(ctx))
    return ctx


def _before_and_after_restart(ctx) -> None:
    """The old container (OLD_CTR) answers; then it is recreated with a new veth and address."""
    n, h = ctx["names"], ctx["host_netns"]
    c.sh(f"ip addr del {c.CTR4}/16 dev eth0 && ip addr add {OLD_CTR}/16 dev eth0"
         f" && ip route add default via {c.BRIDGE4}", n["ctr"])
    c.dnat(ctx, OLD_CTR)
    c.spawn(ctx, n["ctr"], ["python3", "-c", ECHO], wait_port=53)
    if not attempt(ctx):
        raise RuntimeError("the old container did not answer before the restart")
    c.teardown_servers(ctx)
    c.recreate_ctr_link(ctx)
    c.sh(f"iptables -t nat -F PREROUTING && iptables -D FORWARD -d {OLD_CTR} -p udp --dport 53 -j ACCEPT", h)
    c.dnat(ctx, c.CTR4)
    c.spawn(ctx, n["ctr"], ["python3", "-c", ECHO], wait_port=53)


def attempt(ctx) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ctx["names"]["client"], "python3", "-c",
                        QUERY % (SPORT, 2.5, c.HOST4, ctx["port"])], capture_output=True, timeout=6)
    return r.returncode == 0


def fix(ctx) -> None:
    c.sh(f"conntrack -D -p udp --orig-port-dst {ctx['port']}", ctx["host_netns"], check=False)
    time.sleep(0.2)


def teardown(ctx) -> None:
    c.teardown_host(ctx)
