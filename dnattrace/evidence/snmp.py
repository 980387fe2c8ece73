"""IP/TCP MIB counters of a namespace (/proc/net/snmp and /proc/net/netstat), as "IpOutNoRoutes",
"TcpExtListenDrops", ... Some failures free no packet at all (a SYN-ACK that cannot be routed is never
built): only these counters moving tells them apart.
"""
from __future__ import annotations

from dnattrace.netns.enter import entered

FILES = ("/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat")


def parse(text: str) -> dict[str, int]:
    out, lines = {}, text.splitlines()
    for head, vals in zip(lines[0::2], lines[1::2]):
        prefix, names = head.split(":", 1)
        _, values = vals.split(":", 1)
        for n, v in zip(names.split(), values.split()):
            try:
                out[prefix + n] = int(v)
            except ValueError:
                pass
    return out


def counters(netns=None) -> dict[str, int]:
    out = {}
    with entered(netns):
        for path in FILES:
            try:
                with open(path) as f:
                    out.update(parse(f.read()))
            except FileNotFoundError:
                pass
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
