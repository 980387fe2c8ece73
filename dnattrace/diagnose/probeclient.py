"""`diagnose --probe`: make the attempts ourselves from a temporary namespace attached to the host by a
veth, for when no client is at hand. The namespace, the veth and the addresses (a /30 from 203.0.113.0/24,
or with family 6 a /64 of 2001:db8:ffff::/48, documentation ranges) are removed afterwards whatever happens; each is recorded before it is made
(dnattrace.netns.record), so what a SIGKILLed run left is removed by the next one."""
from __future__ import annotations

import random
import subprocess
import sys
from typing import Optional

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


class ProbeClient:
    """A throw-away client namespace: up() builds it, attempts() connects, down() removes it."""

    def __init__(self, host_netns: Optional[str] = None, family: int = 4):
        """family 6: the attempts go over IPv6, to the host's address on the veth (the published port's
        IPv6 DNAT applies to it as to any local address)."""
        self.host_ns = host_netns     # a path, or None for the current namespace
        self.family = family
        token = net.unique("dp")
        self.ns, self.host_if, self.peer_if = token, token + "h", token + "p"
        if family == 6:
            net64 = "2001:db8:ffff:%x::" % random.randrange(1, 0xffff)
            self.host_addr, self.client_addr, self.plen = net64 + "1", net64 + "2", 64
        else:
            base = 4 * random.randrange(1, 63)
            self.host_addr = "203.0.113.%d" % (base + 1)
            self.client_addr = "203.0.113.%d" % (base + 2)
            self.plen = 30
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
