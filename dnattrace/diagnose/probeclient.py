"""`diagnose --probe`: make the attempts ourselves from a temporary namespace attached to the host by a
veth, for when no client is at hand. The namespace, the veth and the addresses (a /30 from 203.0.113.0/24,
or with family 6 a /64 of 2001:db8:ffff::/48, documentation ranges, one no namespace in sight uses:
free_network) are removed afterwards whatever happens; each is recorded before it is made
(dnattrace.netns.record), so what a SIGKILLed run left is removed by the next one."""
from __future__ import annotations

import ipaddress
import random
import subprocess
import sys
from typing import Optional

from dnattrace.errors import UsageError
from dnattrace.netns import build as net, record

_CONNECT = """
import socket, sys, time
dst, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
    except OSError:
        pass
    finally:
        s.close()
"""


def start_connects(netns: str, dst: str, port: int, count: int = 2, timeout: float = 1.0) -> subprocess.Popen:
    """Connect `count` times from namespace `netns` (each bounded by `timeout`), in the background."""
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _CONNECT, dst, str(port),
                             str(count), str(timeout)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: Optional[subprocess.Popen]):
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def in_use(family: int, host_netns: Optional[str] = None) -> list:
    """The networks this machine's namespaces already use, as far as can be seen: every address (with its
    prefix) in the current namespace, the host's and every named one (`ip netns`: the lab's, another
    --probe's), and the host's routes. A --probe network must overlap none of them: a second --probe
    beside this one, or a real network in 203.0.113.0/24, would otherwise share its addresses."""
    spaces = [None, host_netns] + [line.split()[0] for line in net.run(["ip", "netns", "list"], check=False)
                                                                   .stdout.splitlines() if line.strip()]
    nets = []
    for ns in dict.fromkeys(spaces):
        cmd = (["nsenter", "--net=%s" % ns] if ns and ns.startswith("/") else []) + ["ip", "-o", "-%d" % family, "addr", "show"]
        out = net.run(cmd, netns=ns if ns and not ns.startswith("/") else None, check=False).stdout
        nets += [ipaddress.ip_interface(w[w.index("inet") + 1 if "inet" in w else w.index("inet6") + 1]).network
                 for w in (line.split() for line in out.splitlines()) if "inet" in w or "inet6" in w]
    route = (["nsenter", "--net=%s" % host_netns] if host_netns else []) + ["ip", "-%d" % family, "route", "show"]
    for line in net.run(route, check=False).stdout.splitlines():
        dst = line.split()[0] if line.strip() else "default"
        if dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def free_network(family: int, used: list) -> tuple[str, str, int]:
    """(host address, client address, prefix length) of a network no `used` one overlaps: a /30 of
    203.0.113.0/24, or a /64 of 2001:db8:ffff::/48, documentation ranges, chosen at random among the free
    ones. UsageError when every one is taken."""
    if family == 6:
        candidates = ["2001:db8:ffff:%x::/64" % i for i in random.sample(range(1, 0xffff), 512)]
    else:
        candidates = ["203.0.113.%d/30" % (4 * i) for i in random.sample(range(1, 63), 62)]
    for cidr in candidates:
        n = ipaddress.ip_network(cidr)
        if not any(n.overlaps(u) for u in used if u.version == n.version and u.prefixlen > 0):
            hosts = list(n.hosts()) if family == 4 else [n[1], n[2]]
            return str(hosts[0]), str(hosts[1]), n.prefixlen
    raise UsageError("--probe: every network it may use (%s) is taken on this machine"
                     % ("2001:db8:ffff::/48" if family == 6 else "203.0.113.0/24"))


class ProbeClient:
    """A throw-away client namespace: up() builds it, attempts() connects, down() removes it."""

    def __init__(self, host_netns: Optional[str] = None, family: int = 4):
        """family 6: the attempts go over IPv6, to the host's address on the veth (the published port's
        IPv6 DNAT applies to it as to any local address)."""
        self.host_ns = host_netns     # a path, or None for the current namespace
        self.family = family
        token = net.unique("dp")
        self.ns, self.host_if, self.peer_if = token, token + "h", token + "p"
        self.host_addr, self.client_addr, self.plen = free_network(family, in_use(family, host_netns))
        self._proc = None
        self._record = record.Record(self.ns)

    def _host_cmd(self, cmd):
        prefix = ["nsenter", "--net=%s" % self.host_ns] if self.host_ns else []
        net.run(prefix + cmd)

    def up(self):
        record.sweep()       # what killed runs left
        self._record.add("netns", name=self.ns)
        try:
            net.add_netns(self.ns)
            self._record.add("link", name=self.host_if, netns=self.host_ns)
            net.run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if,
                     "netns", self.ns])
            if self.host_ns:
                net.run(["ip", "link", "set", self.host_if, "netns", self.host_ns])
            nodad = ["nodad"] if self.family == 6 else []     # usable at once, not after DAD's second
            self._host_cmd(["ip", "addr", "add", "%s/%d" % (self.host_addr, self.plen), "dev", self.host_if] + nodad)
            self._host_cmd(["ip", "link", "set", self.host_if, "up"])
            net.run(["ip", "addr", "add", "%s/%d" % (self.client_addr, self.plen), "dev", self.peer_if] + nodad,
                    netns=self.ns)
            net.run(["ip", "link", "set", self.peer_if, "up"], netns=self.ns)
            net.run(["ip", "-%d" % self.family, "route", "add", "default", "via", self.host_addr], netns=self.ns)
        except BaseException:
            self.down()
            raise
        return self

    def start_attempts(self, port: int, count: int = 2, timeout: float = 1.0):
        """Connect `count` times (each bounded by `timeout`) in the background."""
        self._proc = start_connects(self.ns, self.host_addr, port, count, timeout)

    def down(self):
        stop(self._proc)
        self._proc = None
        net.del_netns(self.ns)    # deleting the namespace deletes the veth pair with it
        self._record.remove()
