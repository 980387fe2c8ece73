"""What the b_* blind scenarios need beyond blind/common.py's Docker-like host.

blind/common.py builds the host (client, host, container namespaces, the DNAT, the server); the
b_* faults also need: an nft ruleset loaded as text, the container's server replaced by another,
a second namespace plugged into the bridge (a pod beside the container), a container "restart"
(a new veth pair, so new MACs, on the same bridge), and a UDP client with a fixed source port.
Nothing here touches the root namespace.
"""
import os
import signal
import subprocess
import sys
import time

from blind import common

PY_HTTP_LOOPBACK = common.HTTP_SERVER.replace('("::",', '("127.0.0.1",').replace("AF_INET6", "AF_INET")

UDP_FIXED_PORT_CLIENT = r"""
import socket, sys
addr, port, sport, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", sport))
s.settimeout(timeout); s.connect((addr, port)); s.send(b"ping")
try:
    sys.exit(0 if s.recv(2048) == b"echo ping" else 1)
except OSError:
    sys.exit(1)
"""

UDP_SIZED_CLIENT = r"""
import socket, sys
addr, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = b"q" * size
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout); s.connect((addr, port)); s.send(data)
try:
    sys.exit(0 if s.recv(65536) == b"echo " + data else 1)
except OSError:
    sys.exit(1)
"""


def nft(ctx: dict, ruleset: str, ns_key: str = "host") -> None:
    """Loads an nft ruleset (text) into one of the instance's namespaces."""
    subprocess.run(["ip", "netns", "exec", ctx["n"][ns_key], "nft", "-f", "-"], input=ruleset,
                   text=True, check=True, capture_output=True, timeout=10)


def stop_servers(ctx: dict) -> None:
    """Ends the servers started so far (each leads its own session), e.g. to start another one."""
    while ctx.get("pids"):
        pid = ctx["pids"].pop()
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, PermissionError, ChildProcessError):
            pass


def spawn(ctx: dict, ns_key: str, code: str, args: list[str], wait: str) -> None:
    """Starts python code in a namespace; returns when `ss -Hln` there shows `wait` (e.g. ':80 ')."""
    p = subprocess.Popen(["ip", "netns", "exec", ctx["n"][ns_key], sys.executable, "-c", code] + args,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    ctx["pids"].append(p.pid)
    for _ in range(50):
        if wait in common.sh("ss -Hlnut", ns=ctx["n"][ns_key], check=False):
            return
        time.sleep(0.1)
    raise RuntimeError("the server in %s did not start" % ctx["n"][ns_key])


def attach_to_bridge(ctx: dict, ns_key: str, addr: str) -> None:
    """Gives namespace ns_key a second link, on the host's bridge (a pod beside the container),
    and its default route through the bridge."""
    n = ctx["n"]
    h_end, ns_end = n["br"][:-2] + "q", n["br"][:-2] + "r"
    common.sh("ip link add %s netns %s type veth peer name %s netns %s" % (h_end, n["host"], ns_end, n[ns_key]))
    common.sh("ip link set %s master %s && ip link set %s up" % (h_end, n["br"], h_end), ns=n["host"])
    common.sh("ip addr add %s/16 dev %s && ip link set %s up && ip route replace default via %s"
              % (addr, ns_end, ns_end, common.BR4), ns=n[ns_key])


def second_network(ctx: dict, ns_key: str, gw4: str, addr4: str) -> None:
    """A second bridge network (ctx["n"]["br2"], gw4/16) with namespace ns_key on it as its only IPv4
    link (a container of another Docker network): its outside address goes, its default route is gw4."""
    n = ctx["n"]
    n["br2"] = n["br"][:-2] + "b2"
    h_end, ns_end = n["br"][:-2] + "s", n["br"][:-2] + "t"
    common.sh("ip link add %s type bridge && ip addr add %s/16 dev %s && ip link set %s up"
              % (n["br2"], gw4, n["br2"], n["br2"]), ns=n["host"])
    common.sh("ip link add %s netns %s type veth peer name %s netns %s" % (h_end, n["host"], ns_end, n[ns_key]))
    common.sh("ip link set %s master %s && ip link set %s up" % (h_end, n["br2"], h_end), ns=n["host"])
    common.sh("ip -4 addr flush dev %s && ip addr add %s/16 dev %s && ip link set %s up"
              " && ip route replace default via %s" % (n["cveth"], addr4, ns_end, ns_end, gw4), ns=n[ns_key])


def recreate_ctr_link(ctx: dict, addr4: str) -> None:
    """What a container restart does to its link: a new veth pair (new MACs) on the same bridge,
    the container's new address addr4."""
    n = ctx["n"]
    common.sh("ip link del %s" % n["port"], ns=n["host"])
    common.sh("ip link add %s netns %s type veth peer name eth0 netns %s" % (n["port"], n["host"], n["ctr"]))
    common.sh("ip link set %s master %s && ip link set %s up" % (n["port"], n["br"], n["port"]), ns=n["host"])
    common.sh("ip addr add %s/16 dev eth0 && ip link set eth0 up && ip route add default via %s"
              % (addr4, common.BR4), ns=n["ctr"])


def attempt_udp_from(ctx: dict, sport: int, timeout: float = 2.5) -> bool:
    """One bounded UDP request/echo over IPv4 from a fixed source port (as a DNS forwarder does)."""
    return common._client(ctx, [UDP_FIXED_PORT_CLIENT, common.HOST4, str(ctx["port"]), str(sport),
                                str(timeout)], timeout)


def attempt_udp_sized(ctx: dict, size: int, timeout: float = 2.5) -> bool:
    """One bounded UDP request/echo over IPv4 with a payload of `size` bytes."""
    return common._client(ctx, [UDP_SIZED_CLIENT, common.HOST4, str(ctx["port"]), str(size), str(timeout)],
                          timeout)


def attempt_tcp_to(ctx: dict, addr: str, timeout: float = 2.5, ns_key: str = "client") -> bool:
    """One bounded HTTP GET to addr:port (another address than the host's) from namespace ns_key."""
    try:
        p = subprocess.run(["ip", "netns", "exec", ctx["n"][ns_key], sys.executable, "-c", common.TCP_CLIENT,
                            addr, str(ctx["port"]), "/", "1", str(timeout)], capture_output=True,
                           timeout=timeout + 0.5)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0
