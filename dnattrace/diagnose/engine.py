"""The diagnosis engine: replay each failure's decision through the family modules, keep only the causes
that every piece of evidence agrees with, rank them, and say what was ruled out and why.

Failures are grouped by how they ended (where, why, which way, to which backend) before anything is
replayed: a busy port with a failing share has thousands of failing connections but a few ways of failing,
and each way gets its own cause and its share of the connections. What no cause explains is said as such,
with the kernel's own word; a healthy capture gives no finding.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Optional

from dnattrace.model import DROP, Connection, Journey, Step
from dnattrace.evidence.snapshot import Delta, Snapshot
from dnattrace.diagnose.catalogue import CATALOGUE
from dnattrace.diagnose.facts import Facts, failing, other_family_line, representative, silent_after_data  # noqa: F401 (the API)
from dnattrace.diagnose.replay import Finding, rule_dict

NONE = "none"               # the cause id of a healthy connection (no finding)
UNEXPLAINED = "unexplained"
NOTHING_ARRIVED = "nothing-arrived"
EVIDENCE_ONLY_CAP = 0.5     # no packet was seen: evidence alone is never more than a suspicion
_ORDER = {c.id: i for i, c in enumerate(CATALOGUE)} | {UNEXPLAINED: len(CATALOGUE),
                                                        NOTHING_ARRIVED: len(CATALOGUE) + 1}


def top_cause(findings: list[Finding]) -> str:
    """The top cause's id, or "none" for a healthy result."""
    return findings[0].cause_id if findings else NONE


def replay(facts: Facts, cap: float = 1.0) -> tuple[list[Finding], list[str]]:
    """Every cause consistent with the facts (those a holding cause defers to removed), and the lines
    saying which alternatives the evidence ruled out and why."""
    held, ruled_out = {}, []
    for cause in CATALOGUE:
        m = cause.match(facts)
        if m is not None and m.score.contradiction:
            ruled_out.append("not %s: %s" % (cause.id, m.score.contradiction))
            continue
        if m is None or m.score.value <= 0:
            why = cause.refute(facts) if cause.refute else None
            if why:
                ruled_out.append("not %s: %s" % (cause.id, why))
            continue
        held[cause.id] = (cause, m)
    out = []
    for cid, (cause, m) in held.items():
        better = [d for d in cause.defers_to if d in held]
        if better:
            ruled_out.append("not %s: %s explains the same evidence more precisely" % (cid, better[0]))
            continue
        out.append(Finding(cid, cause.title, round(min(m.score.value, cap), 2), m.explanation,
                           [e for e in m.score.evidence if e], m.fix, m.fix_note, rule_dict(m.rule),
                           facts.ns.name, workaround=m.workaround, object=m.obj, unread=m.score.unread))
    out.sort(key=lambda x: (-x.confidence, _ORDER[x.cause_id]))
    return out, ruled_out


def unexplained(f: Facts) -> Finding:
    """A failure that no cause explains: the kernel's own word, so the user still has where and why it
    was dropped (or where the packet was last seen)."""
    j = f.journey
    after = " (after %s)" % f.hook if f.hook else ""
    if f.drop:
        what = "dropped at %s reason %s in %s%s" % (f.drop.location or "?", f.reason or "?", f.ns.name, after)
    elif f.conn is not None and f.conn.outcome == "answered" and silent_after_data(f.conn):
        what = ("the handshake completed and the client's data was delivered in %s, but no data came back and no "
                "drop of it was seen" % f.ns.name)
    elif f.conn is not None and f.conn.outcome in ("no-reply", "unfinished") and f.delivered_to_listener_ns():
        what = "the request was delivered in %s, but no reply was seen leaving" % f.ns.name
    elif j is not None and f.end is not None:
        what = "last seen at %s in %s%s (%s), then nothing" % (f.end.point, f.ns.name, after, j.outcome)
    else:
        what = "no packet was followed far enough to say where it stopped"
    evidence = [f.drop_line()] if f.drop else []
    rv = f.verdict
    if rv is not None:      # the chain attribution's own word: the candidate chains and why others are out
        evidence += rv.refuted if rv.how == "undecided" else ["dropped by %s (%s)" % (rv.chain, rv.how)]
    evidence += ["%s: %s" % (e.name, err) for e in f.snapshot.namespaces() for err in e.errors]
    return Finding(UNEXPLAINED, "No cause explains it consistently", 0.0, "Unexplained: %s." % what,
                   [e for e in evidence if e], netns=f.ns.name)


def nothing_arrived(snapshot: Snapshot) -> Finding:
    """No packet for the port reached the host: a fault too, with what was checked on this host."""
    t, host = snapshot.target, snapshot.host
    ev = ["no packet for %s port %d was seen on any interface of %s" % (t.proto, t.port, host.name)]
    ev += ["listening on port %d in %s: %s" % (t.port, host.name, ", ".join(str(l) for l in host.listeners
                                                                             if l.port == t.port) or "nothing")]
    if t.dnat_rule:
        ev.append("DNAT rule: %s" % t.dnat_rule)
    addrs = [c for l in host.links for c in l.addresses if not c.startswith("127.")]
    ev.append("addresses of %s: %s" % (host.name, ", ".join(addrs) or "none read"))
    # an XDP program on a real NIC drops before any skb exists: no probe sees it, so it is a suspect
    ev += ["suspect: %s program id %d (%s) on %s%s" % (p["hook"], p["id"], p["name"] or "no name", p["dev"],
                                                      " (%s)" % p["mode"] if p.get("mode") else "")
           for p in host.bpf_progs if p["hook"] in ("xdp", "tc-ingress")]
    return Finding(NOTHING_ARRIVED, "Nothing arrived", 0.0,
                   "Nothing arrived: no packet for this port reached this host while watching, so the fault is "
                   "before this host (the client, the network, a firewall or security group on the way), or "
                   "the clients use another address or port than the one published here.", ev, netns=host.name)


def _way_of_failing(f: Facts) -> tuple:
    """What tells two failures apart: how the connection ended, where and why its packet died, which way
    it was going and where NAT sent it. Failures alike in all of these get one replay."""
    end = f.drop or f.end
    return (f.conn.outcome if f.conn else "", end.point if end else "", f.func, f.reason, f.hook,
            f.journey.direction if f.journey else "", f.ns.inode, f.dest)


def _explain_one(facts: Facts) -> list[Finding]:
    found, ruled_out = replay(facts)
    fs = found or [unexplained(facts)]
    for x in fs:
        x.ruled_out = ruled_out
    other = other_family_line(facts)
    if other:
        fs[0].evidence.append(other)
    return fs


def _share(found: list[Finding], groups: dict, total: int, failed: int, seconds: Optional[float]):
    """When some connections were answered, each finding says how many failed its way, of how many, over
    what time, and to which backend: the failures are intermittent."""
    if failed == total or total <= 1:
        return
    over = " over %.1f s" % seconds if seconds else ""
    for x in found:
        n = x.connections
        x.share = "%d of %d connections followed%s" % (n, total, over)
        dests = groups.get(x.cause_id, Counter())
        x.evidence.insert(0, "intermittent: %d of %d connections followed failed this way%s; %d were answered%s "
                             "(a failing attempt begun before watching is followed from its retransmitted SYN: "
                             "failures weigh more in this sample than in the port's traffic)" % (
            n, total, over, total - failed,
            "; the failed ones went to %s" % ", ".join("%s (%d)" % (d, k) for d, k in dests.most_common(3))
            if dests else ""))


# Drops that end a connection's life normally (its socket closed with data queued, duplicates of data
# already received), not failures of the conversation
BENIGN_REASONS = ("SOCKET_CLOSE", "QUEUE_PURGE", "TCP_OLD_DATA", "TCP_OLD_ACK", "TCP_OLD_SEQUENCE",
                  "TCP_INVALID_SEQUENCE", "TCP_CLOSE", "TCP_ZEROWINDOW", "TCP_OFOMERGE")


def stray_failures(connections: list[Connection], snapshot: Snapshot, stray_drops: list[dict]) -> list[Connection]:
    """Failures the followed packets did not show: when every followed connection looks answered, the
    port's packets that were dropped unfollowed (watch follows a connection's handshake and first data
    packet each way; the rest of the conversation, and connections over the rate, are only counted by
    site) in the namespaces diagnose reads. Each site becomes a connection whose one journey is that
    drop, so the replays run on it: a conversation whose later packets die is not healthy."""
    watched = {e.inode for e in snapshot.namespaces()}
    sites = [d for d in stray_drops if d.get("netns_inode") in watched and d.get("count", 0) >= 2
             and d.get("reason") not in BENIGN_REASONS]
    key = next((c.key for c in connections if c.key is not None), None)
    out = []
    for d in sites:
        step = Step(ts_ns=0, point=DROP, netns=d["netns_inode"], netns_name=d.get("netns", ""), tuple=key,
                    location=d.get("location", ""), reason=d.get("reason", "") if d.get("reason") != "UNKNOWN" else "",
                    reason_inferred=d.get("reason_inferred") or None)
        c = Connection(key=key, requests=[Journey(skb=0, steps=[step])])
        c.stray = d.get("count", 0)
        out.append(c)
    return out


def explain(connections: list[Connection], snapshot: Snapshot, delta: Optional[Delta] = None,
            seconds: Optional[float] = None, stray_drops: Optional[list[dict]] = None) -> list[Finding]:
    """Ranked findings for the failing connections (most connections, then highest confidence first), each
    with the alternatives its replay ruled out; a failure no cause explains gives an "unexplained" finding
    with the kernel's word. Healthy connections give none; with no connection at all, "nothing arrived" and
    then what the evidence alone suggests (confidence at most 0.5)."""
    failures = [c for c in connections if failing(c)]
    stray = stray_failures(connections, snapshot, stray_drops or []) if connections and not failures else []
    if connections and not failures and not stray:
        return []
    if stray:
        out = []
        for c in stray:
            fs = _explain_one(Facts(c, snapshot, delta))
            fs[0].evidence.insert(0, "every followed connection was answered, but %d of this port's packets "
                                     "were dropped at %s while not followed (later packets of a conversation, "
                                     "or connections over the rate): intermittent, or the conversation stalls"
                                  % (c.stray, c.requests[0].steps[0].location))
            out.append(fs[0])
        return out
    if not failures:     # nothing arrived: that is the finding; the host's own state may suggest why
        suspicions, _ = replay(Facts(None, snapshot, delta), EVIDENCE_ONLY_CAP)
        return [nothing_arrived(snapshot)] + suspicions
    ways: dict[tuple, list[Facts]] = defaultdict(list)
    for c in failures:
        f = Facts(c, snapshot, delta)
        ways[_way_of_failing(f)].append(f)
    found: dict[str, Finding] = {}
    dests: dict[str, Counter] = defaultdict(Counter)
    for alike in ways.values():
        fs = _explain_one(alike[0])
        for fnd in fs:
            fnd.connections = len(alike)
            old = found.get(fnd.cause_id)
            if old is not None:
                fnd = fnd if fnd.confidence > old.confidence else old
                fnd.connections = old.connections + len(alike)
            found[fnd.cause_id] = fnd
        dest = alike[0].dest
        if dest[0]:
            dests[fs[0].cause_id]["%s:%s" % dest] += len(alike)
    out = sorted(found.values(), key=lambda x: (-x.connections, -x.confidence, _ORDER[x.cause_id]))
    total = len([c for c in connections if c.requests])
    _share(out, dests, max(total, len(failures)), len(failures), seconds)
    return out
