"""`dnattrace doctor`: what this kernel lets dnattrace do (each capability tried for real) and the probe
chosen for every point of a packet's journey. Exit 0 when the minimum (BTF and some kfree_skb
tracepoint) is there, 3 otherwise."""
import json

import click

from dnattrace.kernel import capabilities, preflight, tracefs
from dnattrace.errors import EXIT_CANNOT_OBSERVE, EXIT_OK


def _json_lines(caps, entries, missing):
    for c in caps:
        yield dict(type="capability", **c.to_dict())
    for e in entries:
        yield dict(type="plan", **e.to_dict())
    yield {"type": "summary", "minimum_ok": not missing, "missing": missing, "probe_ms": round(caps.total_ms, 1)}


def _tables(caps, entries):
    from tabulate import tabulate       # ~60 ms to import: only the human output pays for it
    rows = [(c.name, "yes" if c.ok else "no", c.detail, "%.1f" % c.ms) for c in caps]
    out = [tabulate(rows, headers=("capability", "ok", "detail", "ms"),
                    maxcolwidths=[None, None, 70, None]), ""]
    prows = []
    for e in entries:
        passed = "; ".join("%s (%s)" % (p, w) for p, w in e.tried)
        prows.append((e.point, e.probe or e.why, passed))
    out.append(tabulate(prows, headers=("journey point", "probe", "passed over"),
                        maxcolwidths=[None, 50, 60]))
    out.append("")
    out.append("probed in %.0f ms" % caps.total_ms)
    return "\n".join(out)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (capabilities, plan, summary).")
def doctor(as_json):
    """Show what this kernel supports (decided by trying) and which probes dnattrace will use."""
    preflight.require_root()
    tracefs.ensure()
    caps = capabilities.probe()
    entries = capabilities.plan(caps)
    missing = caps.missing_minimum()
    if as_json:
        for obj in _json_lines(caps, entries, missing):
            click.echo(json.dumps(obj, sort_keys=True))
    else:
        click.echo(_tables(caps, entries))
    if missing:
        click.echo("dnattrace: this kernel lacks the minimum: %s" % " and ".join(missing), err=True)
        return EXIT_CANNOT_OBSERVE
    return EXIT_OK
