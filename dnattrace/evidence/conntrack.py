"""Connection tracking statistics: the table's fill (count/max) and the per-CPU event counters
(/proc/net/stat/nf_conntrack: drop, early_drop, insert_failed, ...) summed over CPUs.

A full table makes conntrack refuse new connections: the packet is dropped by netfilter itself
(nf_hook_slow), with nothing in any rule counter.
"""
from __future__ import annotations

from dnattrace.evidence import sysctl
from dnattrace.netns.enter import entered

STAT_FILE = "/proc/thread-self/net/stat/nf_conntrack"


def parse_stat(text: str) -> dict[str, int]:
    """Sum the per-CPU hex columns of /proc/net/stat/nf_conntrack ("entries" is global: taken once)."""
    lines = [l.split() for l in text.splitlines() if l.strip()]
    if not lines:
        return {}
    head, out = lines[0], {}
    for row in lines[1:]:
        for name, val in zip(head, row):
            n = int(val, 16)
            out[name] = n if name == "entries" else out.get(name, 0) + n
    return out


def stats(netns=None) -> dict[str, int]:
    """{"count", "max", "drop", "early_drop", "insert_failed", ...}; empty when conntrack is not loaded."""
    with entered(netns):
        try:
            with open(STAT_FILE) as f:
                out = parse_stat(f.read())
        except FileNotFoundError:
            out = {}
        for key, name in (("net.netfilter.nf_conntrack_count", "count"), ("net.netfilter.nf_conntrack_max", "max")):
            v = sysctl._read_here(key)
            if v is not None:
                out[name] = int(v)
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Event counters that went up (count/max/entries are levels, not events, and are left out)."""
    return {k: after[k] - before.get(k, 0) for k in after
            if k not in ("count", "max", "entries") and after[k] > before.get(k, 0)}


def is_full(st: dict[str, int], margin: float = 0.98) -> bool:
    return bool(st.get("max")) and st.get("count", 0) >= st["max"] * margin


def entries(proto: str, port: int, netns=None) -> list[str]:
    """The conntrack entries whose original destination port is `port` (conntrack -L, one line each):
    their reply tuple says whether NAT was bound to the flow when its first packet passed."""
    from dnattrace.netns.enter import run_tool
    out = run_tool(["conntrack", "-L", "-p", proto, "--orig-port-dst", str(port)], netns)
    return [l.strip() for l in out.splitlines() if l.strip() and not l.startswith("conntrack v")]
