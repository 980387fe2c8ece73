"""Queueing and size decisions replayed: packets too big for the next link whose ICMP error is filtered
(a path MTU black hole: the handshake works, the data stalls)."""
from __future__ import annotations

from typing import Optional

from dnattrace.model import ROUTE
from dnattrace.evidence.firewall import DROP_TARGETS, CounterMove
from dnattrace.diagnose.facts import Facts, host_steps
from dnattrace.diagnose.replay import Cause, Match, Replay


def _icmp_drop_moves(f: Facts) -> list[CounterMove]:
    """DROP/REJECT rules of the filter table that match ICMP and counted packets during the capture."""
    return [m for m in f.moves() if m.table in ("filter", "ip filter") and m.target in DROP_TARGETS
            and not m.policy and "icmp" in m.rule.lower()]


def match_pmtu_blackhole(f: Facts) -> Optional[Match]:
    if not f.seen or f.reason != "PKT_TOO_BIG":
        return None
    dst = f.drop.tuple.dst if f.drop.tuple else ""
    out = next((s for s in host_steps(f, f.journey, ROUTE) if s.route and s.route.oif
                and (s.route.dst == dst or not dst)), None)     # not the ICMP error's own lookup
    oif = f.ns.link(out.route.oif) if out else None
    inl = f.ns.link(f.ingress) if f.ingress else None
    icmp = _icmp_drop_moves(f)
    fails = f.nsdelta.snmp.get("IpFragFails", 0) if f.nsdelta else 0
    s = Replay()
    s.add(3, True, f.drop_line())
    s.add(2, f.conn is not None and f.conn.outcome == "stalled", "the handshake completed; the first data packet "
          "of the reply was dropped (the connection stalls after it is established)")
    smaller = oif is not None and oif.mtu and (inl is None or not inl.mtu or oif.mtu < inl.mtu)
    s.add(2, smaller, "MTU: %s %s, %s %s" % (f.ingress or "?", inl.mtu if inl else "?", oif.name, oif.mtu) if oif else "")
    s.add(3, bool(icmp), "%s (counter moved: the ICMP \"fragmentation needed\" that would tell the sender "
                         "to send smaller packets is dropped)" % icmp[0] if icmp else "")
    s.add(1, fails > 0, "IpFragFails +%d in %s" % (fails, f.ns.name))
    clamp = f.ns.prefix() + "iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    if icmp:
        fix = [f.ns.prefix() + "iptables -I %s -p icmp --icmp-type fragmentation-needed -j ACCEPT" % icmp[0].chain]
        note = "or, a workaround where ICMP cannot be let through: " + clamp
    else:
        fix, note = [clamp], "a workaround (cure: let ICMP type 3 code 4 through wherever it is dropped)"
    return Match(s, "A path MTU black hole: packets of %d+ bytes must leave %s by %s (MTU %s) and cannot be "
                    "fragmented, so the kernel drops them and answers with ICMP \"fragmentation needed\"%s. The "
                    "handshake and small packets pass; the large data never arrives."
                 % ((oif.mtu + 1) if oif and oif.mtu else 0, f.ns.name, oif.name if oif else "?",
                    oif.mtu if oif else "?", ", which is dropped" if icmp else ", which does not reach the sender"),
                 fix, note, icmp[0] if icmp else None).at("ICMP rule %s in %s" % (icmp[0].rule, f.ns.name) if icmp else "MTU of %s in %s" % (oif.name if oif else "?", f.ns.name))


CAUSES = (
    Cause("pmtu-blackhole", "Path MTU black hole: large packets dropped, ICMP filtered", match_pmtu_blackhole),
)
