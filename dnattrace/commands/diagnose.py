"""`dnattrace diagnose`: one-shot root cause (the run is diagnose/run.py, its rendering output/diagnosis.py)."""
from __future__ import annotations

import json
import sys

import click

from dnattrace import model
from dnattrace.kernel import preflight
from dnattrace.commands import options as opt
from dnattrace.commands.watch import watch_options
from dnattrace.errors import EXIT_FAULT, EXIT_OK
from dnattrace.output import tables


def _ready(t, timeout, as_json, client):
    """Said once the probes are attached: a script can start its traffic on this line."""
    if as_json:
        click.echo(json.dumps(tables.record({"type": "start", "target": t.describe(), "timeout": timeout,
                               "probe_client": client.client_addr if client else None})))
    else:
        click.echo("%s. Watching for %g s ..." % (t.describe(), timeout))
        if client:
            click.echo("(--probe: connecting from a temporary namespace %s at %s to %s; removed afterwards)"
                       % (client.ns, client.client_addr, model.hostport(client.host_addr, t.port)))
    sys.stdout.flush()


def _exit_code(res):
    return EXIT_OK if res.healthy else EXIT_FAULT     # 0 only when the client got its answer


@click.command(epilog="\b\nExample:\n  sudo dnattrace diagnose --container web --probe   # why connecting to web's published port fails")
@watch_options
@click.option("--timeout", type=opt.SECONDS, default=10.0, show_default=True, help="Seconds to wait for attempts (an attempt seen in time is followed a few seconds more, until its reply leaves or is dropped).")
@click.option("--probe", is_flag=True, help="Make the attempts from a temporary namespace attached to the host.")
@click.option("--family", type=click.Choice(["4", "6"]), default="4", show_default=True,
              help="With --probe: attempt over IPv4 or IPv6 (a dual-stack host may fail on one only).")
@click.option("--fix", "do_fix", is_flag=True, help="Apply the top cause's fix (asks first on a terminal).")
@click.option("--yes", is_flag=True, help="With --fix: do not ask.")
@click.option("--json", "as_json", is_flag=True, help="The diagnosis as one JSON object.")
@click.pass_context
def diagnose(ctx, port, container, proto, netns, timeout, probe, family, do_fix, yes, as_json):
    """Watch, follow, explain the cause with evidence, and print the fix."""
    from dnattrace import forked
    from dnattrace.diagnose import probeclient, run as dg
    from dnattrace.output import diagnosis
    from dnattrace.watch.resolve import resolve_with_addresses

    if family == "6" and not probe:
        raise click.UsageError("--family chooses the family of --probe's attempts: give --probe too", ctx)
    preflight.require_root()
    preflight.require_btf()
    # the watch's memory budget holds for diagnose too: Docker's and pyroute2's imports (the target, the
    # evidence snapshots) stay in short-lived children
    forked.stay_light()
    t, local = forked.run_apart(resolve_with_addresses, port=port, container=container, proto=proto, netns=netns)
    client = probeclient.ProbeClient(t.host_netns, int(family)).up() if probe else None
    traffic = (lambda: client.start_attempts(t.port, count=2, timeout=1.0)) if client else None
    try:
        res = dg.run(t, timeout=timeout, traffic=traffic, on_ready=lambda: _ready(t, timeout, as_json, client),
                     local=local, client=client.client_addr if client else None)
    finally:
        if client:
            client.down()
    diagnosis.show(res, as_json)
    if do_fix and res.findings:
        top = res.findings[0]
        if not top.fix:
            click.echo("The top cause has no fix command to apply.", err=True)
        elif yes or (sys.stdin.isatty() and click.confirm("Apply: %s ?" % "; ".join(top.fix))):
            for cmd, out in dg.apply_fix(top):
                click.echo("changed: %s%s" % (cmd, (" -> " + out) if out else ""))
        else:
            click.echo("Not applied (use --yes to apply without a terminal).", err=True)
    ctx.exit(_exit_code(res))
