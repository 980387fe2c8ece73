"""Conntrack and NAT decisions replayed: a full table, a published port whose packet was not NATed (and
what its conntrack state says why: no rule applied, a stale entry made before the rule, an untracked
flow), the other family's publication, replies that were not un-NATed, and hairpin traffic."""
from __future__ import annotations

import ipaddress
from typing import Optional

from dnattrace import model
from dnattrace.model import NF, ROUTE
from dnattrace.evidence import conntrack as ct_stats
from dnattrace.evidence import firewall, sysctl
from dnattrace.evidence.firewall import CounterMove
from dnattrace.diagnose.facts import Facts, global_address, not_dnated, other_family
from dnattrace.diagnose.replay import PERSIST, Cause, Match, Replay


def match_conntrack_full(f: Facts) -> Optional[Match]:
    full_ns = next((e for e in [f.ns] + f.snapshot.namespaces() if ct_stats.is_full(e.conntrack)), None)
    moved = {k: v for d in (f.delta.namespaces if f.delta else []) for k, v in d.conntrack.items()
             if k in ("drop", "early_drop", "insert_failed")}
    if not (full_ns or moved):
        return None
    if f.seen and f.drop and not (f.func == "nf_hook_slow" or f.netfilter_drop):
        return None
    s = Replay()
    st = (full_ns or f.ns).conntrack
    s.add(3, full_ns is not None, "nf_conntrack_count = %s, nf_conntrack_max = %s" % (st.get("count"), st.get("max")))
    s.add(2, bool(moved), "conntrack stats moved: %s" % ", ".join("%s +%d" % kv for kv in sorted(moved.items())))
    if f.seen:
        s.add(2, f.func == "nf_hook_slow", f.drop_line())
        s.add(1, f.hook in ("PREROUTING", "OUTPUT"))
    new_max = max(2 * int(st.get("max") or 65536), 131072)
    return Match(s, "The connection tracking table is full, so conntrack refuses new connections and "
                    "netfilter drops their first packets before any rule sees them.",
                 ["sysctl -w net.netfilter.nf_conntrack_max=%d" % new_max], PERSIST).at("sysctl net.netfilter.nf_conntrack_max in %s" % (full_ns or f.ns).name)



def _dnat_rule_checks(f: Facts) -> tuple[list, list[str]]:
    """The DNAT rules for the packet's port, and why each one does not apply to this packet ([] if one does)."""
    rules = f.rules
    first = f.journey.steps[0]
    hook = "OUTPUT" if first.point == NF and first.hook == "OUTPUT" else "PREROUTING"
    tuples = f.journey.tuples()
    dst = tuples[0].dst if tuples else ""
    found = firewall.dnat_targets(rules, f.snapshot.target.port, f.snapshot.target.proto) if rules else []
    reach = rules.reachable("nat", hook) if rules else set()
    why = []
    for d in found:
        r = next((x for x in rules.chain("nat", d.chain).rules if x.text == d.rule), None)
        words = d.rule.split()
        problems = []
        if d.chain not in reach:
            problems.append("its chain %s is not reached from nat %s (where a %s packet is DNATed)"
                            % (d.chain, hook, "locally generated" if hook == "OUTPUT" else "arriving"))
        iif = r.option("-i") if r else None
        if iif and hook == "PREROUTING":
            neg = "!" in words[max(0, words.index("-i") - 1):words.index("-i")]
            if (f.ingress == iif) == neg:
                problems.append("it requires %s-i %s, the packet came in on %s" % ("! " if neg else "", iif, f.ingress))
        daddr = r.option("-d") if r else None
        if daddr and dst and daddr.split("/")[0] != dst and "!" not in words[max(0, words.index("-d") - 1):words.index("-d")]:
            problems.append("it requires -d %s, the packet was sent to %s" % (daddr, dst))
        if not problems:
            return found, []
        why.append("%s: %s" % (d.rule, "; ".join(problems)))
    return found, why


def match_not_dnated(f: Facts) -> Optional[Match]:
    if not not_dnated(f) or not (f.reason == "NO_SOCKET" or f.conn.outcome == "refused"):
        return None
    found, why = _dnat_rule_checks(f)
    if not found or not why:
        return None         # no DNAT for the port, or one that applies (then conntrack is to blame)
    t = f.snapshot.target
    s = Replay()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    ct = next((st.ct for st in f.journey.steps if st.ct), None)
    s.add(2, True, "not DNATed: conntrack reply tuple %s:%d (the host itself, not %s:%d)"
          % (ct.reply.src, ct.reply.sport, f.service_addr, t.service_port) if ct and ct.reply else
          "no DNAT in the packet's journey")
    s.add(3, True, "; ".join(why))
    fix = None
    rules = f.rules
    first = f.journey.steps[0]
    if first.point == NF and first.hook == "OUTPUT" and rules:
        chain = next(d.chain for d in firewall.dnat_targets(rules, t.port, t.proto))
        jump = next((r for r in (rules.chain("nat", "PREROUTING").rules if rules.chain("nat", "PREROUTING") else [])
                     if r.target == chain), None)
        if chain == "PREROUTING" or jump is None:
            src = next(d.rule for d in firewall.dnat_targets(rules, t.port, t.proto))
            text = " ".join(src.split()[2:])
        else:
            text = " ".join(jump.text.split()[2:])
            if "-d" not in text.split():
                text = "! -d 127.0.0.0/8 " + text
        fix = [f.ns.prefix() + "iptables -t nat -A OUTPUT " + text]
    fix = fix or _dnat_copy_fix(f)
    return Match(s, "The published port %s/%d reached %s, but no DNAT rule applied to the packet, so it went to "
                    "the host itself, where nothing listens: %s." % (t.proto, t.port, f.ns.name, "; ".join(why)),
                 fix, "" if fix else "recreate the publication for the address/interface the clients use").at("the DNAT rule for %s/%d in %s" % (t.proto, t.port, f.ns.name))


def _dnat_copy_fix(f: Facts) -> Optional[list[str]]:
    """not-dnated, for a packet arriving from outside: insert a copy of the DNAT rule restricted to what
    the packet really had (its input interface, its destination address) instead of what it did not match."""
    rules = f.rules
    tuples = f.journey.tuples()
    if not rules or not tuples or not f.ingress:
        return None
    for d in firewall.dnat_targets(rules, f.snapshot.target.port, f.snapshot.target.proto):
        words = d.rule.split()[2:]
        out, i, changed = [], 0, False
        while i < len(words):
            neg = words[i] == "!" and i + 1 < len(words)
            opt = words[i + 1] if neg else words[i]
            if opt in ("-i", "-d") and i + (2 if neg else 1) < len(words):
                val = words[i + (2 if neg else 1)]
                want = f.ingress if opt == "-i" else tuples[0].dst
                ok = (val == want or val.split("/")[0] == want) != neg
                out += ([opt, want] if not ok else words[i:i + (3 if neg else 2)])
                changed |= not ok
                i += 3 if neg else 2
                continue
            out.append(words[i])
            i += 1
        if changed:
            return [f.ns.prefix() + "iptables -t nat -I %s 1 %s" % (d.chain, " ".join(out))]
    return None


def match_family_not_published(f: Facts) -> Optional[Match]:
    """The port is DNATed for one IP family only (Docker before 27 publishes IPv4 only unless ip6tables
    is on; a hand-written rule set may cover one family): a client of the other family reaches the host
    itself, where nothing listens on the published port."""
    if not not_dnated(f) or not (f.reason == "NO_SOCKET" or f.conn.outcome == "refused"):
        return None
    t, other = f.snapshot.target, other_family(f.family)
    mine = firewall.dnat_targets(f.rules, t.port, t.proto) if f.rules else []
    theirs_rules = f.ns.ruleset(other)
    theirs = firewall.dnat_targets(theirs_rules, t.port, t.proto) if theirs_rules else []
    if mine or not theirs:
        return None         # a DNAT of this family that did not apply is not-dnated's; none at all: no-listener's
    other_tool = "ip6tables" if other == 6 else "iptables"
    s = Replay()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    s.add(3, True, "no %s DNAT rule for %s port %d in %s: the packet was not DNATed" % (f.tool, t.proto, t.port,
                                                                                         f.ns.name))
    s.add(3, True, "%s DNAT for it: %s" % (other_tool, theirs[0].rule))
    addr = global_address(f.snapshot.container, f.family)
    fix, note = None, ("the container has no IPv%d address: enable IPv%d on its network first (docker network "
                       "create --ipv6 --subnet ...)" % (f.family, f.family))
    if addr:
        fix = [f.ns.prefix() + "%s -t nat -A PREROUTING -p %s --dport %d -m addrtype --dst-type LOCAL -j DNAT "
               "--to-destination %s" % (f.tool, t.proto, t.port, model.hostport(addr, theirs[0].target_port)),
               f.ns.prefix() + "%s -I FORWARD -d %s -p %s --dport %d -j ACCEPT" % (f.tool, addr, t.proto,
                                                                                  theirs[0].target_port)]
        s.note("the container has the IPv%d address %s" % (f.family, addr))
        note = "with Docker, let the engine write these: \"ip6tables\": true in /etc/docker/daemon.json " \
               "(with \"experimental\": true before 27) and IPv6 on the network"
    return Match(s, "Port %s/%d is published for IPv%d only: %s DNATs it to %s, but %s has no DNAT rule for it, so "
                    "this IPv%d client's packet reaches %s itself, where nothing listens on the port, and is refused. "
                    "IPv%d clients of the same port get through."
                 % (t.proto, t.port, other, other_tool, model.hostport(theirs[0].addr, theirs[0].target_port),
                    f.tool, f.family, f.ns.name, other), fix, note).at("%s nat table in %s (no DNAT for %s/%d)" % (f.tool, f.ns.name, t.proto, t.port))


def match_udp_stale_conntrack(f: Facts) -> Optional[Match]:
    if not not_dnated(f) or f.reason != "NO_SOCKET":
        return None
    found, why = _dnat_rule_checks(f)
    if not found or why:
        return None         # the DNAT rule would not apply anyway: that is not-dnated
    t = f.snapshot.target
    tup = f.journey.tuples()[0]
    seen, ct = _ct_after_conntrack(f)
    entries = [e for e in f.ns.ct_entries if "sport=%d" % tup.sport in e and "dport=%d" % t.port in e]
    s = Replay()
    if seen and (ct is None or ct.state == "UNTRACKED"):
        s.contradict("the packet had no conntrack entry after conntrack ran (%s): no old entry carried it"
                     % ("untracked" if ct else "none: invalid"))
    dnat_moved = [m for m in f.moves() if m.table == "nat" and m.target == "DNAT"]
    s.add(3, True, f.drop_line())
    s.add(2, True, "a DNAT rule for %s/%d exists and matches the packet: %s" % (t.proto, t.port, found[0].rule))
    s.add(3, bool(entries), "conntrack: %s" % entries[0] if entries else "")
    s.add(1, not dnat_moved, "the DNAT rule's counter did not move (nat rules see only a flow's first packet)")
    return Match(s, "The flow's conntrack entry was made before the DNAT rule for %s/%d existed (or while it was "
                    "missing); NAT is bound to an entry only at its first packet, so every later packet of this "
                    "flow still goes to the host itself, where nothing listens. Delete the stale entry."
                 % (t.proto, t.port),
                 [f.ns.prefix() + "conntrack -D -p %s --orig-port-dst %d" % (t.proto, t.port)],
                 "Docker >= 23 flushes these entries when it publishes a UDP port").at("conntrack entries of %s/%d in %s" % (t.proto, t.port, f.ns.name))


def _reply_source(f: Facts) -> Optional[tuple[str, int]]:
    """Where a dropped reply came from, when that is not what the client connected to (the reply was
    not un-NATed: the client's kernel has no socket for it and drops it, or answers with a RST)."""
    j, c = f.journey, f.conn
    if c is None or j is None or j.direction != "reply" or j.outcome != "dropped" or c.key is None:
        return None
    if f.drop is not None and f.drop.netns in {e.inode for e in f.snapshot.namespaces()}:
        return None     # dropped on the service's side, before its NAT would have been undone
    t = (f.drop.tuple if f.drop and f.drop.tuple else None) or (j.tuples()[-1] if j.tuples() else None)
    if t is None or (t.src, t.sport) == (c.key.dst, c.key.dport):
        return None
    return t.src, t.sport


def _notrack_moves(f: Facts) -> list[CounterMove]:
    """NOTRACK rules (raw table; iptables-nft shows them as CT --notrack) whose counters moved, in any
    namespace the capture read."""
    out = []
    for d in (f.delta.namespaces if f.delta else []):
        out += [m for m in d.moves if m.table == "raw" and (m.target in ("NOTRACK", "CT") or "notrack" in m.rule.lower())]
    return out


def _untracked_on_host(f: Facts) -> bool:
    """The reply crossed the host's hooks without a conntrack entry: seen at a hook's last position,
    where conntrack has run (at the first position of PREROUTING and OUTPUT it has not yet)."""
    host = f.snapshot.host.inode
    return any(s.point == NF and s.netns == host and s.stage == "last" and (s.ct is None or s.ct.state == "UNTRACKED")
               for s in f.journey.steps)


def match_reply_notrack(f: Facts) -> Optional[Match]:
    src = _reply_source(f)
    moves = _notrack_moves(f)
    if src is None or not (moves or _untracked_on_host(f)):
        return None
    s = Replay()
    s.add(3, True, "the reply reached the client from %s:%d, not from %s:%d that it connected to: its NAT was "
                   "not undone" % (src + (f.conn.key.dst, f.conn.key.dport)))
    s.add(3, bool(moves), "%s (counter moved during the capture)" % moves[0] if moves else "")
    s.add(2, _untracked_on_host(f), "the reply crossed %s's hooks without a conntrack entry" % f.snapshot.host.name)
    s.add(1, f.drop is not None, f.drop_line())
    host = f.snapshot.host
    fix = [firewall.fix_delete(moves[0], host.netns)] if moves else None
    return Match(s, "A NOTRACK rule in the raw table makes conntrack skip the container's replies, so the DNAT is "
                    "never undone on them: the client gets a SYN-ACK from %s:%d, which it never connected to, and "
                    "drops it (or resets it). Exempt the published service's traffic from the NOTRACK rule." % src,
                 fix, "or narrow the rule so it does not match traffic of DNATed connections", moves[0] if moves else None).at("the raw table NOTRACK rule in %s" % host.name)


def match_reply_not_unnated(f: Facts) -> Optional[Match]:
    src = _reply_source(f)
    if src is None or _notrack_moves(f) or _untracked_on_host(f):
        return None
    s = Replay()
    s.add(3, True, "the reply reached the client from %s:%d, not from %s:%d that it connected to"
          % (src + (f.conn.key.dst, f.conn.key.dport)))
    s.add(1, f.drop is not None, f.drop_line())
    crossed = any(st.netns == f.snapshot.host.inode for st in f.journey.steps)
    s.add(2, not crossed, "" if crossed else "the reply did not pass through %s, where the DNAT was done"
          % f.snapshot.host.name)
    host = f.snapshot.host
    key = "net.bridge.bridge-nf-call-%s" % ("ip6tables" if f.family == 6 else "iptables")
    routed = any(st.point == ROUTE and st.netns == host.inode for st in f.journey.steps)
    if crossed and not routed and sysctl.as_int(host.sysctls, key) == 0:
        # bridged between two ports of the host's bridge, never routed: only br_netfilter would have shown
        # it to conntrack, which undoes the DNAT
        s.add(3, True, "the reply was bridged in %s without a route decision, and %s = 0" % (host.name, key))
        return Match(s, "The reply was bridged straight back (client and service on the same bridge of %s) with "
                        "%s = 0, so netfilter never sees it and conntrack cannot undo the DNAT: the client gets a "
                        "reply from %s:%d, which it never connected to." % (host.name, key, src[0], src[1]),
                     [host.prefix() + "sysctl -w %s=1" % key], PERSIST,
                     obj="sysctl %s in %s" % (key, host.name))
    return Match(s, "The reply reached the client without its NAT undone (from %s:%d): it took a path that "
                    "avoids the host that did the DNAT, or conntrack there lost the entry. Route the replies "
                    "back through that host (or SNAT the requests so they must come back)." % src).at("the path of the replies (they avoid %s)" % f.snapshot.host.name)


def _hairpin(f: Facts) -> Optional[tuple]:
    """The packet came from a bridge (a container calling its host's published address) and the DNAT
    rule for the port excludes that bridge: (bridge link, DnatTarget)."""
    if not not_dnated(f) or not f.ingress:
        return None
    br = f.ns.link(f.ingress)
    if br is None or br.kind != "bridge" or not f.rules:
        return None
    for d in firewall.dnat_targets(f.rules, f.snapshot.target.port, f.snapshot.target.proto):
        words = d.rule.split()
        if "-i" in words and words[words.index("-i") + 1] == br.name and words[words.index("-i") - 1] == "!":
            if d.addr and any(ipaddress.ip_address(d.addr) in ipaddress.ip_interface(c).network for c in br.addresses):
                return br, d
    return None


def match_no_hairpin_dnat(f: Facts) -> Optional[Match]:
    if not (f.reason == "NO_SOCKET" or (f.conn is not None and f.conn.outcome == "refused")):
        return None
    h = _hairpin(f)
    if h is None:
        return None
    br, d = h
    t = f.snapshot.target
    src = f.journey.tuples()[0].src
    ret = [m for m in f.moves() if m.table == "nat" and m.target == "RETURN" and "-i %s" % br.name in m.rule]
    listen = [l for l in f.ns.listeners if l.port == t.port]
    s = Replay()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    s.add(3, True, "the packet came in on %s (from %s, a container on it); the DNAT rule excludes it: %s"
          % (br.name, src, d.rule))
    s.add(1, bool(ret), "%s (counter moved: traffic from the bridge leaves the DNAT chain)" % ret[0] if ret else "")
    s.add(2, not listen, "nothing listens on %s port %d in %s (no userland proxy to take the connection)"
          % (t.proto, t.port, f.ns.name))
    rule = " ".join(w for w in d.rule.split()[2:])
    rule = rule.replace("! -i %s" % br.name, "-i %s" % br.name)
    fix = [f.ns.prefix() + "iptables -t nat -I %s 1 %s" % (d.chain, rule)]
    return Match(s, "A container on %s connects to the host's published port %s/%d. Docker's DNAT rule skips traffic "
                    "from the bridge (`! -i %s`) because its userland proxy, listening on the port, is meant to take "
                    "those connections, but no proxy listens here, so the host itself refuses them. Add the hairpin "
                    "DNAT for traffic from the bridge." % (br.name, t.proto, t.port, br.name), fix,
                 "or run Docker's userland proxy (\"userland-proxy\": true, the default); Docker with "
                 "userland-proxy=false writes this hairpin DNAT itself").at("the DNAT rule %s in %s" % (d.rule, f.ns.name))


def match_stale_nat_target(f: Facts) -> Optional[Match]:
    """The packet was NATed by its flow's conntrack entry to an address that no DNAT rule for the port
    targets now: the entry was made under an older rule (a container restarted with another address, a
    rule replaced) and binds the flow, and its retransmissions, to the old target until it expires."""
    if not f.seen or f.journey.direction != "request" or not f.rules:
        return None
    ct = next((st.ct for st in f.journey.steps if st.ct and st.ct.dnat), None)
    t = f.snapshot.target
    now = firewall.dnat_targets(f.rules, t.port, t.proto)
    if ct is None or not now:
        return None
    old = ct.dnat
    if any(d.addr == old[0] and d.target_port == old[1] for d in now):
        return None         # the entry agrees with a rule of today: not stale
    s = Replay()
    s.add(3, True, "the flow's conntrack entry (state %s) DNATs it to %s" % (ct.state, model.hostport(*old)))
    s.add(3, True, "the DNAT rules for %s/%d now send to %s" % (
        t.proto, t.port, ", ".join(model.hostport(d.addr, d.target_port) for d in now)))
    entries = [e for e in f.ns.ct_entries if "src=%s " % old[0] in e + " "]
    s.add(1, bool(entries), "conntrack: %s" % entries[0] if entries else "")
    if f.drop is not None:
        s.note(f.drop_line())
    return Match(s, "A conntrack entry made under an older DNAT rule still sends this flow to %s, an address the "
                    "rules for %s/%d no longer target; NAT is bound to an entry at its first packet, so the flow "
                    "keeps going to the old target until the entry is deleted or expires."
                 % (model.hostport(*old), t.proto, t.port),
                 [f.ns.prefix() + "conntrack -D -p %s --orig-port-dst %d --reply-src %s" % (t.proto, t.port, old[0])],
                 obj="conntrack entries of %s/%d with reply source %s in %s" % (t.proto, t.port, old[0], f.ns.name))


CONNTRACK_PRIORITY = -200       # NF_IP_PRI_CONNTRACK: past it, a packet has its entry, or is untracked or invalid


def _ct_after_conntrack(f: Facts):
    """(seen, ct): the packet's conntrack entry as a probe after conntrack saw it at the namespace's first
    hook (PREROUTING or OUTPUT); seen is False when no probe sat there (kernels without netfilter links)."""
    for st in f.journey.steps if f.journey else []:
        if st.point == NF and st.netns == f.ns.inode and st.hook in ("PREROUTING", "OUTPUT") \
                and st.priority is not None and st.priority > CONNTRACK_PRIORITY:
            return True, st.ct
    return False, None


def match_nat_skipped(f: Facts) -> Optional[Match]:
    """A published port's packet, matched by a DNAT rule that applies, reached the host itself un-NATed
    because conntrack did not track it: NAT works on conntrack entries. Its state after conntrack says why:
    untracked (a NOTRACK rule), or no entry at all (conntrack found it invalid)."""
    if not not_dnated(f) or not (f.reason == "NO_SOCKET" or (f.conn and f.conn.outcome == "refused")):
        return None
    found, why = _dnat_rule_checks(f)
    seen, ct = _ct_after_conntrack(f)
    moves = [m for m in _notrack_moves(f) if m.family == f.family]
    if not seen and moves:
        # no probe after conntrack on this kernel (no netfilter links): the NOTRACK rule's counter says it
        ct = model.CtInfo("UNTRACKED")
    elif not seen or (ct is not None and ct.state != "UNTRACKED"):
        return None
    if not found or why:
        return None
    t = f.snapshot.target
    s = Replay()
    if not seen:
        s.unknown(2, "the packet's conntrack state (no netfilter probe after conntrack on this kernel)")
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    s.add(2, True, "a DNAT rule for %s/%d exists and matches the packet: %s" % (t.proto, t.port, found[0].rule))
    if ct is not None:
        s.add(3, seen, "after conntrack in %s the packet was untracked (IP_CT_UNTRACKED)" % f.ns.name)
        if moves:
            s.add(2, True, "%s (counter moved during the capture)" % moves[0])
        else:
            s.unknown(2, "which rule untracks it (no NOTRACK rule counter moved: an nft notrack rule counts nothing)")
        return Match(s, "A NOTRACK rule makes conntrack skip the packets of %s/%d in %s, so NAT, which works on "
                        "conntrack entries, never rewrites them: they reach %s itself instead of %s. Exempt the "
                        "published port from the NOTRACK rule." % (t.proto, t.port, f.ns.name, f.ns.name,
                                                                    f.service_addr),
                     [firewall.fix_delete(moves[0], f.ns.netns)] if moves else None,
                     "or narrow the rule so it does not match the published port", moves[0] if moves else None,
                     obj=("the raw table rule %s in %s" % (moves[0].rule, f.ns.name)) if moves
                     else "a notrack rule in a raw-priority prerouting chain of %s" % f.ns.name)
    inv = sum(d.conntrack.get("invalid", 0) for d in (f.delta.namespaces if f.delta else []))
    s.add(3, True, "after conntrack in %s the packet had no conntrack entry: conntrack found it invalid" % f.ns.name)
    s.add(2, inv > 0, "conntrack invalid +%d" % inv)
    s.unknown(1, "why conntrack found it invalid (its log: net.netfilter.nf_conntrack_log_invalid)")
    return Match(s, "Conntrack found the packets of %s/%d invalid (they do not fit a connection it knows: a "
                    "window, checksum or state mismatch), and NAT applies only to tracked packets, so they reach "
                    "%s itself instead of %s." % (t.proto, t.port, f.ns.name, f.service_addr), None,
                 "to see why: sysctl -w net.netfilter.nf_conntrack_log_invalid=%d, then read the kernel log"
                 % (6 if t.proto == "tcp" else 17),
                 obj="conntrack's state of the flow (invalid) in %s" % f.ns.name)


def _refute_conntrack_full(f: Facts) -> Optional[str]:
    st = f.ns.conntrack
    if st.get("max") and not ct_stats.is_full(st):
        return "conntrack holds %s of %s entries in %s" % (st.get("count"), st.get("max"), f.ns.name)
    return None


CAUSES = (
    Cause("conntrack-full", "The conntrack table is full", match_conntrack_full, refute=_refute_conntrack_full),
    Cause("not-dnated", "No DNAT rule applied to the published port", match_not_dnated,
          defers_to=("no-hairpin-dnat",)),
    Cause("family-not-published", "The port is published for the other IP family only", match_family_not_published),
    Cause("stale-nat-target", "A conntrack entry binds the flow to an old NAT target", match_stale_nat_target),
    Cause("nat-skipped", "Conntrack did not track the packet, so NAT never saw it", match_nat_skipped),
    Cause("udp-stale-conntrack", "A conntrack entry older than the DNAT rule", match_udp_stale_conntrack,
          defers_to=("nat-skipped",)),
    Cause("reply-notrack", "The reply bypasses conntrack (NOTRACK), so it is not un-NATed", match_reply_notrack),
    Cause("reply-not-unnated", "The reply reaches the client without its NAT undone", match_reply_not_unnated),
    Cause("no-hairpin-dnat", "A container calls the published port; the DNAT excludes its bridge",
          match_no_hairpin_dnat),
)
