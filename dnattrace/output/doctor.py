"""How `doctor` is shown: the capabilities tried, then the probe chosen for every journey point (the
same choice watch makes: kernel/plan.py), as tables or as JSON lines."""
from __future__ import annotations

from dnattrace.output import tables


def json_objects(caps, choices, missing):
    for c in caps:
        yield dict(type="capability", **c.to_dict())
    for c in choices:
        yield dict(type="plan", **c.to_dict())
    yield {"type": "summary", "minimum_ok": not missing, "missing": missing, "probe_ms": round(caps.total_ms, 1)}


def text(caps, choices) -> str:
    rows = [{"capability": c.name, "ok": "yes" if c.ok else "no", "detail": c.detail, "ms": "%.1f" % c.ms}
            for c in caps]
    out = [tables.table(rows, ("capability", "ok", "detail", "ms"), maxcolwidths=[None, None, 70, None]), ""]
    prows = [{"journey point": c.point, "probe": c.probe.label if c.probe else "unavailable",
              "passed over": "; ".join("%s (%s)" % t for t in c.tried)} for c in choices]
    out.append(tables.table(prows, ("journey point", "probe", "passed over"), maxcolwidths=[None, 50, 60]))
    out.append("")
    out.append("probed in %.0f ms" % caps.total_ms)
    return "\n".join(out)
