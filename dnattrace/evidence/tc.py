"""What acts on packets below IP in a namespace: XDP and tc BPF programs attached to its interfaces
(`bpftool -j net show`, with each tc filter's priority from `tc -j filter show`), and its qdiscs with their
drop counters (`tc -j -s qdisc show`).

A drop at TC_INGRESS/TC_EGRESS, XDP or a qdisc is the decision of one of these objects; when nothing
arrives at all, an XDP program on the way in is a suspect (on a real NIC it drops before any skb exists).
"""
from __future__ import annotations

import json
import subprocess


def _json(netns, *cmd) -> list:
    prefix = ["nsenter", "--net=%s" % netns] if netns else []
    out = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=10, check=True).stdout
    return json.loads(out or "[]")


def programs(netns=None) -> list[dict]:
    """XDP and tc BPF programs on the namespace's interfaces: {"dev", "hook" (xdp, tc-ingress, tc-egress),
    "id", "name", "mode" (xdp: generic, driver, offload), "pref" (tc: the filter's priority)}."""
    out = []
    for entry in _json(netns, "bpftool", "-j", "net", "show"):
        for p in entry.get("xdp", []):
            out.append({"dev": p.get("devname", ""), "hook": "xdp", "id": p.get("id", 0),
                        "name": p.get("name", ""), "mode": p.get("mode", "")})
        for p in entry.get("tc", []):
            direction = "egress" if p.get("kind", "").endswith("egress") else "ingress"
            out.append({"dev": p.get("devname", ""), "hook": "tc-" + direction, "id": p.get("id", 0),
                        "name": p.get("name", ""), "pref": _pref(netns, p.get("devname", ""), direction,
                                                                 p.get("id", 0))})
    return out


def _pref(netns, dev: str, direction: str, prog_id: int) -> int:
    """The priority of the tc filter that runs program prog_id (0 when it is not a classic filter: tcx)."""
    try:
        filters = _json(netns, "tc", "-j", "filter", "show", "dev", dev, direction)
    except (subprocess.SubprocessError, OSError, ValueError):
        return 0
    for f in filters:
        if f.get("options", {}).get("prog", {}).get("id") == prog_id:
            return f.get("pref", 0)
    return 0


def qdiscs(netns=None) -> list[dict]:
    """Every qdisc: {"dev", "kind", "handle", "parent" ("root" for a root qdisc), "drops"}."""
    return [{"dev": q.get("dev", ""), "kind": q.get("kind", ""), "handle": q.get("handle", ""),
             "parent": "root" if q.get("root") else q.get("parent", ""), "drops": q.get("drops", 0)}
            for q in _json(netns, "tc", "-j", "-s", "qdisc", "show")]


def drops_delta(before: list[dict], after: list[dict]) -> dict[str, int]:
    """{"DEV KIND HANDLE": drops counted in between} for the qdiscs whose drop counter moved."""
    old = {(q["dev"], q["handle"], q["kind"]): q["drops"] for q in before}
    return {"%s %s %s" % k: q["drops"] - old.get(k, 0) for q in after
            for k in [(q["dev"], q["handle"], q["kind"])] if q["drops"] > old.get(k, 0)}
