"""Human and JSON renderings of journeys and connections (watch and diagnose share them).

A journey is printed as a short timeline: one line per device receive/transmit, one line per netfilter
hook (its conntrack state and any NAT rewrite inside it, before -> after), the route decision, and the
end (delivered, sent, or dropped with site and reason, naming the hook it was dropped in).
"""
from __future__ import annotations

from typing import Optional

from dnattrace import model


def _ns(step: model.Step) -> str:
    return step.netns_name or ("netns:%d" % step.netns if step.netns else "?")


def _rewrite(before: Optional[model.Tuple5], after: Optional[model.Tuple5]) -> str:
    if not before or not after or before == after:
        return ""
    parts = []
    if (before.dst, before.dport) != (after.dst, after.dport):
        parts.append("DNAT %s -> %s" % (model.hostport(before.dst, before.dport), model.hostport(after.dst, after.dport)))
    if (before.src, before.sport) != (after.src, after.sport):
        parts.append("SNAT %s -> %s" % (model.hostport(before.src, before.sport), model.hostport(after.src, after.sport)))
    return "; ".join(parts)


def _hook_groups(steps):
    """Split steps into runs: consecutive NF steps of one hook in one namespace form one group."""
    groups: list[list[model.Step]] = []
    for s in steps:
        if (s.point == model.NF and groups and groups[-1][0].point == model.NF
                and groups[-1][0].hook == s.hook and groups[-1][0].netns == s.netns):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def hook_line(group: list[model.Step]) -> str:
    first, last = group[0], group[-1]
    bits = []
    ct = next((s.ct for s in reversed(group) if s.ct), None)
    if ct:
        bits.append("conntrack %s" % ct.state)
    rw = _rewrite(first.tuple, last.tuple)
    if rw:
        bits.append(rw)
    if last.stage == "chain" and last.priority is not None:
        # a chain bracket sits one below the chains it opens; the next bracket did not see the packet
        bits.append("did not pass (last seen before the chains at priority %d)" % (last.priority + 1))
    elif last.stage != "last":
        bits.append("did not pass (last seen %s)" % last.stage)
    dev = first.ifname or ""
    if first.out_ifname and first.out_ifname != dev:
        dev = "%s->%s" % (dev, first.out_ifname) if dev else "->" + first.out_ifname
    return "%-11s %-14s %-12s %s" % (first.hook, dev, _ns(first), "; ".join(bits) or "passed")


def route_text(r: model.RouteInfo) -> str:
    if r.err:
        return "table %d: lookup for %s failed (%d)" % (r.table, r.dst, r.err)
    where = {True: "local delivery", False: "must be forwarded", None: ""}[r.local]
    via = " via %s" % r.gateway if r.gateway else ""
    return "table %d: %s%s dev %s%s" % (r.table, r.dst, via, r.oif or "-", " (%s)" % where if where else "")


def step_lines(j: model.Journey) -> list[str]:
    lines = []
    for group in _hook_groups(j.steps):
        s = group[0]
        if s.point == model.NF:
            lines.append(hook_line(group))
        elif s.point == model.RX:
            lines.append("%-11s %-14s %-12s %s [%s]" % ("rx", s.ifname, _ns(s), s.tuple, s.tcp_flags))
        elif s.point == model.XMIT:
            lines.append("%-11s %-14s %-12s %s [%s]" % ("xmit", s.ifname, _ns(s), s.tuple, s.tcp_flags))
        elif s.point == model.ROUTE and s.route:
            if s.route.reverse and not s.route.err:
                continue
            lines.append("%-11s %-14s %-12s %s" % ("rp-check" if s.route.reverse else "route",
                                                   s.route.oif, _ns(s), route_text(s.route)))
        elif s.point == model.RTRESULT:
            lines.append("%-11s %-14s %-12s input handler %s%s" % ("route", s.out_ifname, _ns(s), s.location or "?",
                                                                  " (%s)" % s.reason if s.reason else ""))
        elif s.point == model.VERDICT:
            lines.append("%-11s %-14s %-12s verdict %s" % (s.hook, "", _ns(s), s.reason))
        elif s.point == model.DROP:
            hook = drop_hook(j)
            lines.append("%-11s %-14s %-12s %s reason %s%s" % ("drop", s.ifname, _ns(s), s.location, reason_text(s),
                                                             " (inside %s)" % hook if hook else ""))
        elif s.point == model.CONSUME:
            label = "done" if j.outcome == "sent" else "delivered"
            lines.append("%-11s %-14s %-12s consumed at %s" % (label, "", _ns(s), s.location or "?"))
    for point in j.unobservable:
        lines.insert(1 if lines else 0, "%-11s %-14s %-12s not observable on this kernel" % (
            UNOBSERVABLE_LABELS.get(point, point), "", _ns(j.first) if j.steps else "?"))
    return lines


# how a point the kernel cannot show is named in a journey's text
UNOBSERVABLE_LABELS = {"netfilter hooks": "hooks", "route decision": "route"}


def reason_text(s: model.Step) -> str:
    """A drop's reason as printed: the kernel's, or the one inferred from the site, marked so."""
    if not s.reason:
        return "unknown (this kernel reports none)"
    return s.reason + (" (inferred)" if s.reason_inferred else "")


def drop_hook(j: model.Journey) -> Optional[str]:
    """The netfilter hook a dropped packet was inside: its last NF step did not reach the hook's end."""
    if j.drop is None:
        return None
    verdict = next((s for s in reversed(j.steps) if s.point == model.VERDICT), None)
    if verdict is not None:         # the kernel said which hook dropped it (fexit/kretprobe nf_hook_slow)
        return verdict.hook
    nf = j.last_nf()
    if nf is None or nf.stage == "last":
        return None
    after = [s for s in j.steps if s.ts_ns > nf.ts_ns and s.point not in (model.DROP, model.VERDICT)]
    return nf.hook if not after else None


def journey_end(j: model.Journey) -> str:
    end = j.end_step
    if j.outcome == "dropped":
        hook = drop_hook(j)
        return "dropped at %s (%s)%s" % (end.location, reason_text(end), " in %s" % hook if hook else "")
    if j.outcome == "delivered":
        return "delivered in %s" % _ns(end)
    if j.outcome == "sent":
        x = next((s for s in reversed(j.steps) if s.point == model.XMIT), end)
        return "sent out of %s (%s)" % (x.ifname, _ns(x))
    return "no end seen (last: %s in %s)" % (j.last.where, _ns(j.last))


def same_path(a: model.Journey, b: model.Journey) -> bool:
    """Two transmissions that took the same way and ended the same way (retransmissions usually do)."""
    def sig(j):
        return [(s.point, s.hook, s.stage, s.ifname, s.location) for s in j.steps]
    return sig(a) == sig(b)


def render_journey(j: model.Journey, conn: model.Connection, t0_ns: int) -> str:
    """The text printed when a journey finishes."""
    reqs = conn.openers
    at = (j.first.ts_ns - t0_ns) / 1e9
    if j in reqs:
        n = reqs.index(j) + 1
        head = "%s %s" % ("SYN" if j.first.tcp_flags == "S" else conn.key.proto_name.upper(), conn.key)
        if n > 1 and same_path(reqs[n - 2], j):
            return "  transmission %d at +%.2fs: same path, %s" % (n, at, journey_end(j))
        title = "%s  transmission %d at +%.2fs" % (head, n, at)
    elif j.direction == "request":
        title = "  client [%s] %s  at +%.2fs" % (j.first.tcp_flags, j.first.tuple, at)
    else:
        title = "  reply [%s] %s  at +%.2fs" % (j.first.tcp_flags, j.first.tuple, (j.first.ts_ns - t0_ns) / 1e9)
    lines = [title] + ["    " + l for l in step_lines(j)]
    if j.lost_events:
        lines.append("    (%d events lost while this packet was followed)" % j.lost_events)
    return "\n".join(lines)


def connection_row(c: model.Connection) -> list:
    ends = [journey_end(j) for j in c.requests]
    where = ends[-1] if ends else ""
    replies = ", ".join(sorted({"[%s]" % r.first.tcp_flags for r in c.replies})) or "none"
    return [str(c.key), c.attempts, c.outcome, where, replies]


# what the summary says of each drop site of packets not followed (drops.Describer's names)
UNFOLLOWED_DROP_FIELDS = ("count", "location", "function", "reason", "netns", "proto", "port")


def unfollowed_drops_text(ds: list[dict], at_s: float) -> str:
    """The live line(s) for drops of packets not followed, as they are seen (about once a second)."""
    return "\n".join("not followed: %d packets dropped at %s (%s) in %s  at +%.2fs"
                     % (d["count"], d["location"], d["reason"], d["netns"], at_s) for d in ds)


def _drop_sites(ds: list[dict]) -> list[dict]:
    return [{k: d.get(k) for k in UNFOLLOWED_DROP_FIELDS} for d in ds]


def unfollowed_drops_json(ds: list[dict]) -> dict:
    return {"type": "unfollowed_drops", "drops": _drop_sites(ds)}


def _by_outcome(untold) -> dict[str, int]:
    """Connections retired without a row, by outcome (an int: by outcome unknown)."""
    return untold if isinstance(untold, dict) else ({"not kept": untold} if untold else {})


def accounting_line(conns: list[model.Connection], untold, acct: dict) -> str:
    """Every connection the kernel saw open, in one line: admitted (and how many of those the summary
    holds, with a row or by outcome), not followed (and why), events lost."""
    followed = len(conns) + sum(_by_outcome(untold).values())
    why = "over --max-rate"
    if acct.get("shed"):
        why = "%d over --max-rate, %d while the reader lagged" % (acct["not_followed"] - acct["shed"], acct["shed"])
    return ("connections: %d admitted, %d followed to an outcome; %d not followed (%s); %d events lost"
            % (acct.get("admitted", 0), followed, acct.get("not_followed", 0), why, acct.get("lost_events", 0)))


def summary_table(conns: list[model.Connection], lost: int, not_followed: int = 0, untold=0,
                  unfollowed_drops: list[dict] = (), acct: Optional[dict] = None) -> str:
    rows = [connection_row(c) for c in conns]
    if rows:
        # imported here, and only for a table: tabulate (with wcwidth's tables) is 8 MB, which a long watch
        # does not need to hold, and 40 ms of a short watch's exit
        from tabulate import tabulate
        out = tabulate(rows, headers=["connection", "transmissions", "outcome", "ended", "replies"])
    else:
        out = "no matching packets were seen"
    untold = _by_outcome(untold)
    if untold:
        out += "\n(and %d more connections, not kept: %s)" % (
            sum(untold.values()), ", ".join("%d %s" % (n, o) for o, n in sorted(untold.items())))
    if not_followed and not (acct and acct.get("shed")):
        out += ("\n%d connections were not followed: more new connections a second than --max-rate allows"
                % not_followed)
    if acct and acct.get("shed"):
        out += ("\n%d connections were not followed: %d while the events of those followed waited to be read "
                "(admitting fewer instead of losing their events)" % (not_followed, acct["shed"]))
    if acct is not None:
        out += "\n" + accounting_line(conns, untold, acct)
    if unfollowed_drops:
        out += "\npackets of the watched flows dropped while not followed:"
        for d in unfollowed_drops:
            out += "\n  %d at %s (%s) in %s" % (d["count"], d["location"], d["reason"], d["netns"])
    if lost:
        out += "\nWARNING: %d events were lost: journeys above may be incomplete, none is reported as not dropped." % lost
    return out


def journey_json(j: model.Journey, c: model.Connection) -> dict:
    d = model.to_dict(j)
    d.update({"type": "journey", "connection": model.to_dict(c.key), "family": c.key.family, "outcome": j.outcome,
              "transmission": (c.openers.index(j) + 1) if j in c.openers else None,
              "end": journey_end(j), "drop_hook": drop_hook(j)})
    return d


def summary_json(conns: list[model.Connection], lost: int, not_followed: int = 0, untold=0,
                 unfollowed_drops: list[dict] = (), acct: Optional[dict] = None) -> dict:
    untold = _by_outcome(untold)
    acct = acct or {}
    return {"type": "summary", "lost_events": lost, "not_followed": not_followed,
            "admitted": acct.get("admitted"), "shed": acct.get("shed"),
            "followed": len(conns) + sum(untold.values()),
            "connections_not_kept": sum(untold.values()), "not_kept_by_outcome": untold,
            "unfollowed_drops": _drop_sites(unfollowed_drops),
            "connections": [{"key": model.to_dict(c.key), "family": c.key.family, "transmissions": c.attempts,
                             "outcome": c.outcome,
                             "dropped": c.dropped, "replies": [r.first.tcp_flags for r in c.replies],
                             "ended": connection_row(c)[3]} for c in conns]}
