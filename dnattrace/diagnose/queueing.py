"""Queueing and size decisions replayed: packets too big for the next link whose ICMP error is filtered
(a path MTU black hole: the handshake works, the data stalls)."""
from __future__ import annotations

from typing import Optional

from dnattrace.model import ROUTE
from dnattrace.evidence.firewall import DROP_TARGETS
from dnattrace.diagnose.facts import Facts, host_steps
from dnattrace.diagnose.replay import Cause, Match, Replay


def _icmp_drop_moves(f: Facts) -> list[tuple]:
    """DROP/REJECT rules of the filter table that match ICMP (ICMPv6 for IPv6) and counted packets during the
    capture, in any namespace read: the error can be filtered on its way back, in the container too."""
    moved = [(d, m) for d in (f.delta.namespaces if f.delta else []) for m in d.moves
             if m.family == f.family and m.table in ("filter", "ip filter") and m.target in DROP_TARGETS]
    icmp = [(d, m) for d, m in moved if not m.policy and "icmp" in m.rule.lower()]
    # else what drops on INPUT where the large packets come from: the error is delivered to their sender
    return icmp or [(d, m) for d, m in moved if m.chain == "INPUT"]


def _narrowest(f: Facts):
    """Without the packet's own route step (its drop was counted, not followed): the link of the namespace
    whose MTU is below its others', the one a too-big packet is refused for. None when all are alike."""
    links = [l for l in f.ns.links if l.up and l.mtu and l.name != "lo" and l.addresses]
    if not links:
        return None
    low = min(links, key=lambda l: l.mtu)
    return low if low.mtu < max(l.mtu for l in links) else None


def match_pmtu_blackhole(f: Facts) -> Optional[Match]:
    if not f.seen or f.reason != "PKT_TOO_BIG":
        return None
    dst = f.drop.tuple.dst if f.drop.tuple else ""
    out = next((s for s in host_steps(f, f.journey, ROUTE) if s.route and s.route.oif
                and (s.route.dst == dst or not dst)), None)     # not the ICMP error's own lookup
    oif = f.ns.link(out.route.oif) if out else _narrowest(f)
    inl = f.ns.link(f.ingress) if f.ingress else None
    icmp = _icmp_drop_moves(f)
    fails = f.nsdelta.snmp.get("IpFragFails", 0) if f.nsdelta else 0
    s = Replay()
    s.add(3, True, f.drop_line())
    s.add(2, f.conn is not None and f.conn.outcome == "stalled", "the handshake completed; the first data packet "
          "of the reply was dropped (the connection stalls after it is established)")
    smaller = oif is not None and oif.mtu and (inl is None or not inl.mtu or oif.mtu < inl.mtu)
    s.add(2, smaller, "MTU: %s %s, %s %s" % (f.ingress or "?", inl.mtu if inl else "?", oif.name, oif.mtu) if oif else "")
    v6 = f.family == 6
    error = "ICMPv6 \"packet too big\"" if v6 else "ICMP \"fragmentation needed\""
    s.add(3, bool(icmp), "%s in %s (counter moved: the %s that would tell the sender to send smaller packets "
                         "is dropped)" % (icmp[0][1], icmp[0][0].name, error) if icmp else "")
    s.add(1, fails > 0, "IpFragFails +%d in %s" % (fails, f.ns.name))
    tool = "ip6tables" if v6 else "iptables"
    clamp = f.ns.prefix() + "%s -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu" % tool
    if icmp:
        d, m = icmp[0]
        prefix = "nsenter --net=%s " % d.netns if d.netns else ""
        fix = [prefix + ("ip6tables -I %s -p ipv6-icmp --icmpv6-type packet-too-big -j ACCEPT" if v6 else
                         "iptables -I %s -p icmp --icmp-type fragmentation-needed -j ACCEPT") % m.chain]
        note = "or, a workaround where ICMP cannot be let through: " + clamp
    else:
        fix, note = [clamp], "a workaround (cure: let the %s through wherever it is dropped)" % error
    mtu = oif.mtu if oif else "?"
    return Match(s, "A path MTU black hole: packets of %s+ bytes must leave %s by %s (MTU %s) and %s, so the kernel "
                    "drops them and answers with %s%s. The handshake and small packets pass; the large data never "
                    "arrives." % ((oif.mtu + 1) if oif and oif.mtu else "?", f.ns.name, oif.name if oif else "?", mtu,
                                  "IPv6 routers never fragment" if v6 else "cannot be fragmented", error,
                                  ", which is dropped in %s" % icmp[0][0].name if icmp else ", which does not reach the sender"),
                 fix, note, icmp[0][1] if icmp else None).at(
        "%s rule %s in %s" % (tool, icmp[0][1].rule, icmp[0][0].name) if icmp else
        "MTU of %s in %s" % (oif.name if oif else "?", f.ns.name))


PROG_HOOKS = {"TC_INGRESS": "tc-ingress", "TC_EGRESS": "tc-egress", "XDP": "xdp"}
QDISC_REASONS = ("QDISC_DROP", "QDISC_OVERLIMIT", "QDISC_CONGESTED", "CAKE_FLOOD", "FQ_BAND_LIMIT",
                 "FQ_HORIZON_LIMIT", "FQ_FLOW_LIMIT")


def _prog_fix(f: Facts, p: dict) -> list[str]:
    if p["hook"] == "xdp":
        return [f.ns.prefix() + "ip link set dev %s %s off" % (p["dev"], "xdpgeneric" if p.get("mode") == "generic"
                                                                 else "xdp")]
    direction = p["hook"].split("-")[1]
    if p.get("pref"):
        return [f.ns.prefix() + "tc filter del dev %s %s pref %d" % (p["dev"], direction, p["pref"])]
    return [f.ns.prefix() + "bpftool net detach tcx_%s dev %s" % (direction, p["dev"])]


def match_bpf_prog_drop(f: Facts) -> Optional[Match]:
    """A tc filter or an XDP program on the packet's device returned drop (TC_INGRESS, TC_EGRESS, XDP)."""
    if not f.seen or f.drop is None:
        return None
    hook, dev = PROG_HOOKS.get(f.reason), f.drop.ifname
    s = Replay()
    if hook is None:
        # kernels before the TC_INGRESS reason (5.10, 6.1) free a packet a tc ingress filter shot, unnamed,
        # in the receive path: the site and a program attached there are the evidence, the reason is not
        if f.reason not in ("", "NOT_SPECIFIED") or f.func != "__netif_receive_skb_core" or not any(
                p["hook"] == "tc-ingress" and p["dev"] == dev for p in f.ns.bpf_progs):
            return None
        hook = "tc-ingress"
        s.unknown(2, "the kernel's drop reason (this kernel does not name tc drops)")
    s.add(3, True, f.drop_line() + (" on %s" % dev if dev else ""))
    progs = [p for p in f.ns.bpf_progs if p["hook"] == hook and (not dev or p["dev"] == dev)]
    if not progs:
        s.unknown(3, "which %s program or filter on %s drops it (none is attached as a BPF program: a classic "
                     "filter's action?)" % (hook, dev or "the device"))
        return Match(s, "A %s filter on %s in %s drops the packet." % (hook, dev or "?", f.ns.name),
                     None, "list them: tc filter show dev %s %s" % (dev or "DEV", hook.split("-")[-1]),
                     obj="the %s hook of %s in %s" % (hook, dev or "?", f.ns.name))
    p = progs[0]
    s.add(3, True, "%s program id %d (%s) on %s%s" % (hook, p["id"], p["name"] or "no name", p["dev"],
                                                     ", filter pref %d" % p["pref"] if p.get("pref") else ""))
    return Match(s, "The %s BPF program %s (id %d) on %s in %s returns drop for the packet."
                 % (hook, p["name"] or "?", p["id"], p["dev"], f.ns.name), _prog_fix(f, p),
                 "detaching it removes whatever else it does: better, fix what it matches (bpftool prog dump xlated "
                 "id %d)" % p["id"],
                 obj="%s program id %d (%s) on %s in %s" % (hook, p["id"], p["name"] or "?", p["dev"], f.ns.name))


def match_qdisc_drop(f: Facts) -> Optional[Match]:
    """A qdisc on the device the packet was queued to dropped it (full, over its limit, a policing one)."""
    if not f.seen or f.drop is None or f.reason not in QDISC_REASONS:
        return None
    dev = f.drop.ifname
    s = Replay()
    s.add(3, True, f.drop_line() + (" on %s" % dev if dev else ""))
    link = f.ns.link(dev) if dev else None
    noop = [q for q in f.ns.qdiscs if q["dev"] == dev and q["kind"] == "noop"]
    if noop or (link is not None and (not link.up or link.state in ("DOWN", "LOWERLAYERDOWN"))):
        s.contradict("%s cannot send (%s): its qdisc drops whatever is routed to it; the route, not a queue, "
                     "decided" % (dev, "noop qdisc" if noop else "state %s" % (link.state or "down")))
    moved = {k: n for k, n in (f.nsdelta.qdisc_drops if f.nsdelta else {}).items() if not dev or k.split()[0] == dev}
    mine = [q for q in f.ns.qdiscs if q["dev"] == dev] if dev else []
    if moved:
        key, n = max(moved.items(), key=lambda kv: kv[1])
        d, kind, handle = key.split()
        s.add(3, True, "qdisc %s %s on %s: drops +%d during the capture" % (kind, handle, d, n))
        q = next((x for x in mine if x["handle"] == handle), {"parent": ""})
        fix = [f.ns.prefix() + "tc qdisc del dev %s %s" % (d, "root" if q["parent"] == "root" else
                                                           "parent %s handle %s" % (q["parent"], handle))]
        return Match(s, "The %s qdisc %s on %s in %s drops the packet (its drop counter moved by %d while "
                        "watching): it is full, over its limit, or polices this traffic." % (kind, handle, d,
                                                                                             f.ns.name, n),
                     fix, "removing it removes its shaping too: or raise its limit (tc qdisc change ...)",
                     obj="qdisc %s %s on %s in %s" % (kind, handle, d, f.ns.name))
    s.unknown(3, "which qdisc on %s counted the drop (no drop counter moved that was read)" % (dev or "the device"))
    return Match(s, "A qdisc on %s in %s drops the packet (%s)." % (dev or "?", f.ns.name, f.reason),
                 obj="the qdiscs of %s in %s: %s" % (dev or "?", f.ns.name,
                                                     ", ".join("%s %s" % (q["kind"], q["handle"]) for q in mine) or "?"))


CAUSES = (
    Cause("pmtu-blackhole", "Path MTU black hole: large packets dropped, ICMP filtered", match_pmtu_blackhole),
    Cause("bpf-prog-drop", "A tc or XDP program drops it", match_bpf_prog_drop),
    Cause("qdisc-drop", "A qdisc drops it", match_qdisc_drop, defers_to=("misrouted",)),
)
