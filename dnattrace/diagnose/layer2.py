"""Layer-2 decisions replayed: a next hop that never answers ARP/NDP (who holds its address now, and
whether the path from the host to it is whole: bridge, ports, the holder's own link)."""
from __future__ import annotations

from typing import Optional

from dnattrace.diagnose.facts import Facts
from dnattrace.diagnose.replay import Cause, Match, Replay


def match_neigh_failed(f: Facts) -> Optional[Match]:
    nb = f.ns.neighbour(f.dest[0]) if f.dest[0] else None
    failed = nb is not None and any(st in nb["state"] for st in ("FAILED", "INCOMPLETE"))
    reason = f.neighbour_failed
    stalled = f.seen and f.drop is None and f.journey.outcome == "unfinished" and f.route is not None
    if not (reason or (failed and (stalled or not f.seen))):
        return None
    s = Replay()
    s.add(3, reason, f.drop_line())
    s.add(2, failed, "neighbour %s on %s: %s" % (nb["addr"], nb["dev"], nb["state"]) if nb else "")
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and r.oif, "route %s -> dev %s" % (f.dest[0], r.oif) if r else "")
    t = f.snapshot.target
    if t.dnat_rule:
        s.note("DNAT rule: %s" % t.dnat_rule)
    return Match(s, "Nothing at %s answers ARP%s: the address the packet is sent to (the DNAT target) is "
                    "wrong or its container is down. Check the container's address (docker inspect) and "
                    "the DNAT rule." % (f.dest[0] or "the next hop", " on %s" % r.oif if r and r.oif else ""))


def _down_bridge_ports(f: Facts) -> list:
    """Ports (members) of the bridge the packet was routed to that are administratively down."""
    r = f.route.route if f.route and f.route.route else None
    br = f.ns.link(r.oif) if r and r.oif else None
    if br is None or br.kind != "bridge":
        return []
    return [l for l in f.ns.links if l.master == br.name and not l.up]


def match_bridge_port_down(f: Facts) -> Optional[Match]:
    if not f.seen or f.journey.direction != "request" or not f.neighbour_failed:
        return None
    down = _down_bridge_ports(f)
    if not down:
        return None
    br = f.ns.link(f.route.route.oif)
    ports = [l for l in f.ns.links if l.master == br.name]
    s = Replay()
    s.add(3, True, f.drop_line())
    s.add(3, True, "bridge %s: port%s %s administratively DOWN (%d of %d ports up)"
          % (br.name, "s" if len(down) > 1 else "", ", ".join(l.name for l in down), len(ports) - len(down), len(ports)))
    nb = f.ns.neighbour(f.dest[0]) if f.dest[0] else None
    s.add(1, nb is not None and any(x in nb["state"] for x in ("FAILED", "INCOMPLETE")),
          "neighbour %s on %s: %s" % (nb["addr"], nb["dev"], nb["state"]) if nb else "")
    return Match(s, "The container's port on bridge %s is down (%s), so ARP for %s is never answered: the address "
                    "is right, the link to it is not. Bring the port up (Docker: restart the container)."
                 % (br.name, ", ".join(l.name for l in down), f.dest[0]),
                 [f.ns.prefix() + "ip link set %s up" % l.name for l in down])


def _refute_neigh_failed(f: Facts) -> Optional[str]:
    addr = f.dest[0]
    nb = f.ns.neighbour(addr) if addr else None
    if nb is not None and not any(st in nb["state"] for st in ("FAILED", "INCOMPLETE")):
        return "neighbour %s is %s" % (addr, nb["state"])
    return None


CAUSES = (
    Cause("neigh-failed", "The next hop does not answer ARP", match_neigh_failed,
          defers_to=("reply-policy-route", "bridge-port-down"), refute=_refute_neigh_failed),
    Cause("bridge-port-down", "The container's bridge port is down", match_bridge_port_down),
)
