"""Layer-2 decisions replayed: a next hop that never answers ARP/NDP (who holds its address now, and
whether the path from the host to it is whole: bridge, ports, the holder's own link)."""
from __future__ import annotations

from typing import Optional

from dnattrace.diagnose.facts import Facts, drop_moves
from dnattrace.diagnose.replay import Cause, Match, Replay


def _path_break(f: Facts, holder, addr: str, oif: str):
    """Where the layer-2 path from the host's `oif` to the holder of `addr` is broken: (line, object, fix)
    or None when it looks whole. Reads the holder's link that carries the address and its veth peer here."""
    link = next((l for l in holder.links if any(c.split("/")[0] == addr for c in l.addresses)), None)
    if link is None:
        return None
    if not link.up:
        return ("%s holds %s on %s, which is administratively DOWN" % (holder.name, addr, link.name),
                "link %s in %s" % (link.name, holder.name), [holder.prefix() + "ip link set %s up" % link.name])
    peer = next((l for l in f.ns.links if link.peer and l.index == link.peer and l.kind == "veth"), None)
    if peer is not None and oif and peer.master != oif and f.ns.link(oif) is not None \
            and f.ns.link(oif).kind == "bridge":
        where = "bridge %s" % peer.master if peer.master else "no bridge"
        return ("%s's %s (holding %s) is the peer of %s in %s, which is a port of %s, not of %s where the "
                "route sends the packet" % (holder.name, link.name, addr, peer.name, f.ns.name, where, oif),
                "veth %s in %s (its bridge)" % (peer.name, f.ns.name),
                [f.ns.prefix() + "ip link set %s master %s" % (peer.name, oif)])
    return None


def match_neigh_failed(f: Facts) -> Optional[Match]:
    addr = f.dest[0]
    nb = f.ns.neighbour(addr) if addr else None
    failed = nb is not None and any(st in nb["state"] for st in ("FAILED", "INCOMPLETE"))
    reason = f.neighbour_failed
    stalled = f.seen and f.drop is None and f.journey.outcome == "unfinished" and f.route is not None
    if not (reason or (failed and (stalled or not f.seen))):
        return None
    s = Replay()
    s.add(3, reason, f.drop_line())
    s.add(2, failed, "neighbour %s on %s: %s" % (nb["addr"], nb["dev"], nb["state"]) if nb else "")
    r = f.route.route if f.route and f.route.route else None
    oif = r.oif if r and r.oif else ""
    s.add(1, bool(oif), "route %s -> dev %s" % (addr, oif) if oif else "")
    t = f.snapshot.target
    if t.dnat_rule:
        s.note("DNAT rule: %s" % t.dnat_rule)
    on = " on %s" % oif if oif else ""
    looked, holder = f.holder(addr)
    if not looked:
        s.unknown(2, "which namespace on this host holds %s" % addr)
        return Match(s, "Nothing at %s answers ARP%s: the address the packet is sent to is wrong or its holder "
                        "is unreachable. Check the container's address (docker inspect) and the DNAT rule."
                     % (addr or "the next hop", on), obj="neighbour %s%s in %s" % (addr, on, f.ns.name))
    if holder is None:
        s.add(3, True, "no namespace on this host (ip netns, Docker, Podman) holds %s" % addr)
        return Match(s, "Nothing at %s answers ARP%s because no namespace on this host holds %s: the packet is "
                        "sent to an address nobody has (a DNAT target or conntrack entry for a container that "
                        "is gone or got another address). Point the DNAT rule at the container's current address."
                     % (addr, on, addr), obj="the NAT target %s (%s)" % (addr, t.dnat_rule or "DNAT rule"))
    s.add(2, True, "%s holds %s" % (holder.name, addr))
    broken = _path_break(f, holder, addr, oif)
    nd_drops = drop_moves(f, "INPUT") if f.family == 6 else []
    if broken is None and nd_drops:
        # NDP runs over ICMPv6, so the neighbour's advertisement crosses this namespace's INPUT hook (ARP
        # does not: iptables never sees it)
        m = nd_drops[0]
        s.add(3, True, "%s (counter moved during the capture: the neighbour advertisements arrive as ICMPv6 "
                       "and are dropped on INPUT)" % m)
        accept = [f.ns.prefix() + "ip6tables -I %s -p ipv6-icmp --icmpv6-type %s -j ACCEPT" % (m.chain, t)
                  for t in ("neighbour-advertisement", "neighbour-solicitation")]
        return Match(s, "%s holds %s, but its neighbour advertisements are dropped by %s in %s (NDP is ICMPv6, "
                        "so it crosses INPUT), so %s never resolves it." % (holder.name, addr, m, f.ns.name, addr),
                     accept, "or whatever accepts ICMPv6 on the uplink only: accept it on %s too" % (oif or "the bridge"),
                     m, obj="ip6tables filter %s %s in %s" % (m.chain, "policy" if m.policy else "rule " + m.rule,
                                                               f.ns.name))
    if broken is None:
        s.unknown(3, "why %s in %s does not answer ARP (arp_ignore, an arp-family or bridge filter)"
                  % (addr, holder.name))
        return Match(s, "%s holds %s and the links between look up, yet it does not answer ARP%s: something "
                        "between filters ARP or the holder ignores it." % (holder.name, addr, on),
                     obj="neighbour %s%s in %s" % (addr, on, f.ns.name))
    line, obj, fix = broken
    s.add(3, True, line)
    return Match(s, "%s is held by %s, but the layer-2 path to it is broken: %s, so ARP for it is never "
                    "answered." % (addr, holder.name, line), fix, obj=obj)


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
                 [f.ns.prefix() + "ip link set %s up" % l.name for l in down]).at("bridge port %s of %s in %s" % (", ".join(l.name for l in down), br.name, f.ns.name))


def _refute_neigh_failed(f: Facts) -> Optional[str]:
    addr = f.dest[0]
    nb = f.ns.neighbour(addr) if addr else None
    if nb is not None and not any(st in nb["state"] for st in ("FAILED", "INCOMPLETE")):
        return "neighbour %s is %s" % (addr, nb["state"])
    return None


CAUSES = (
    Cause("neigh-failed", "The next hop does not answer ARP", match_neigh_failed,
          defers_to=("reply-policy-route", "bridge-port-down", "stale-nat-target", "misrouted"), refute=_refute_neigh_failed),
    Cause("bridge-port-down", "The container's bridge port is down", match_bridge_port_down),
)
