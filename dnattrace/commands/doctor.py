"""`dnattrace doctor`: what this kernel lets dnattrace do (each capability tried for real) and the probe
chosen for every point of a packet's journey. Exit 0 when the minimum (BTF and some kfree_skb
tracepoint) is there, 3 otherwise."""
import click

from dnattrace.errors import EXIT_CANNOT_OBSERVE, EXIT_OK
from dnattrace.kernel import capabilities, plan, preflight, tracefs
from dnattrace.output import doctor as shown, tables


@click.command(epilog="\b\nExample:\n  sudo dnattrace doctor --json | jq -c 'select(.type==\"plan\")'")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (capabilities, plan, summary).")
def doctor(as_json):
    """Show what this kernel supports (decided by trying) and which probes dnattrace will use."""
    preflight.require_root()
    tracefs.ensure()
    caps = capabilities.probe(refresh=True)    # doctor tries everything, and renews this boot's answers
    choices = plan.choose(caps)
    choices = choices + [plan.rule_verdict(choices)]
    missing = caps.missing_minimum()
    if as_json:
        for obj in shown.json_objects(caps, choices, missing):
            tables.emit(tables.json_line(obj))
    else:
        tables.emit(shown.text(caps, choices))
    if missing:
        click.echo("dnattrace: this kernel lacks the minimum: %s" % " and ".join(missing), err=True)
        return EXIT_CANNOT_OBSERVE
    return EXIT_OK
