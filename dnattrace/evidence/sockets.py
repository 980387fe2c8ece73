"""Listening sockets of a namespace, from /proc/thread-self/net/{tcp,tcp6,udp,udp6} read inside it.

"Nothing listens" is the commonest reason a DNATed SYN reaches the container and is answered by a RST.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from dnattrace.netns.enter import entered

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


@dataclass
class Listener:
    proto: str
    addr: str
    port: int
    inode: int

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.addr).is_loopback

    def accepts(self, dst: str) -> bool:
        """Would a packet to dst reach this socket (wildcard, or the same address)?"""
        return ipaddress.ip_address(self.addr).is_unspecified or self.addr == dst

    def __str__(self):
        return "%s %s:%d" % (self.proto, self.addr, self.port)


def _addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hexaddr, 16)))
    words = struct.unpack("<4I", raw)  # four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))


def parse_proc_net(text: str, proto: str, state: str) -> list[Listener]:
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != state:
            continue
        a, p = f[1].split(":")
        out.append(Listener(proto, _addr(a), int(p, 16), int(f[9])))
    return out


def listeners(port=None, proto: str = "tcp", netns=None) -> list[Listener]:
    """Sockets listening (TCP) or bound unconnected (UDP) in netns, optionally only on `port`."""
    state = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    out = []
    with entered(netns):
        for name in (proto, proto + "6"):
            try:
                with open("/proc/thread-self/net/" + name) as f:
                    out += parse_proc_net(f.read(), proto, state)
            except FileNotFoundError:
                pass
    return [l for l in out if port is None or l.port == port]
