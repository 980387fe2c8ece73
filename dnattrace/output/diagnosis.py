"""How a diagnosis is shown: the attempt, one representative journey, then the causes ranked, each with
its plain-words explanation, evidence and fix; or that the connection works; or that nothing arrived."""
from __future__ import annotations

import json

import click

from dnattrace import model
from dnattrace.output import journey_lines, tables
from dnattrace.diagnose import engine
from dnattrace.diagnose.run import Result


def _attempt_line(c: model.Connection) -> str:
    what = "SYN" if c.key.proto == 6 else c.key.proto_name.upper()
    n, d = c.attempts, c.dropped
    tail = "%d transmission%s" % (n, "" if n == 1 else "s")
    if d:
        tail += ", %d dropped" % d
    if c.replies:
        tail += ", reply %s" % " ".join("[%s]" % r.first.tcp_flags for r in c.replies[:3])
    return "%s %s   %s" % (what, c.key, tail)


def text(res: Result) -> str:
    out = []
    c = res.representative
    if c is not None:
        out.append(_attempt_line(c))
        j = next((j for j in c.openers if j.outcome == "dropped"), None) or (c.openers or c.requests)[-1]
        out += ["  " + l for l in journey_lines.step_lines(j)]
        if c.replies:
            out.append("  reply:")
            out += ["  " + l for l in journey_lines.step_lines(c.replies[0])]
    if res.lost_events:
        out.append("WARNING: %d events were lost; the journey may be incomplete." % res.lost_events)
    if res.healthy:
        out.append("No fault: the connection works (%s)." % journey_lines.journey_end(c.openers[0] if c.openers else c.requests[0]))
        return "\n".join(out)
    for i, f in enumerate(res.findings):
        head = "Cause" if i == 0 and f.confidence > 0 else "Finding" if i == 0 else "Also possible"
        out.append("%s: %s  (%s, confidence %d%%)" % (head, f.explanation or f.title, f.cause_id,
                                                      round(f.confidence * 100)))
        if f.object:
            out.append("  object    %s" % f.object)
        for e in f.evidence:
            out.append("  evidence  %s" % e)
        for u in f.unread:
            out.append("  not read  %s" % u)
        if f.rule:
            out.append("  rule      %s %s: %s  (%s packets)" % (f.rule.get("table"), f.rule.get("chain"),
                                                              f.rule.get("rule"), f.rule.get("packets")))
        label = "workaround" if f.workaround else "fix"
        for cmd in f.fix or []:
            out.append("  %-9s %s" % (label, cmd))
        if f.fix_note:
            out.append("            (%s)" % f.fix_note)
        if i == 0:
            out += ["  ruled out %s" % r for r in f.ruled_out]
        if i == 2:
            break
    return "\n".join(out)


def as_dict(res: Result) -> dict:
    c = res.representative
    return {
        "type": "diagnosis",
        "target": {"proto": res.target.proto, "port": res.target.port, "container": res.target.container,
                   "backends": [{"addr": b.addr, "port": b.port} for b in res.target.backends]},
        "seen": res.seen,
        "healthy": res.healthy,
        "top_cause": engine.top_cause(res.findings),
        "findings": [f.to_dict() for f in res.findings],
        "connection": journey_lines.summary_json([c], 0)["connections"][0] if c else None,
        # the journey the finding is about: the dropped one (a SYN, or a reply dropped on its way back)
        "journey": journey_lines.journey_json(engine.representative(c), c) if c and (c.requests or c.replies) else None,
        "lost_events": res.lost_events,
        "watched_s": round(res.watched_s, 3),
        "explain_ms_after_first_failure": round((res.explained_at - res.first_failure_at) * 1000)
        if res.first_failure_at and res.explained_at else None,
    }


def show(res: Result, as_json: bool):
    """Print the diagnosis: one JSON object, or the text for people."""
    if as_json:
        click.echo(json.dumps(tables.record(as_dict(res))))
    else:
        click.echo(text(res))
