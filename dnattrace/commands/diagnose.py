"""`dnattrace diagnose` (one-shot root cause) and `dnattrace demo` (the reference case end to end)."""
from __future__ import annotations

import json
import sys
import time

import click

from dnattrace.kernel import preflight
from dnattrace.commands.watch import watch_options
from dnattrace.errors import EXIT_FAULT, EXIT_OK, UsageError


def _print_result(res, as_json):
    from dnattrace.output import diagnosis
    if as_json:
        click.echo(json.dumps(diagnosis.as_dict(res)))
    else:
        click.echo(diagnosis.text(res))


def _ready(t, timeout, as_json, client):
    """Said once the probes are attached: a script can start its traffic on this line."""
    if as_json:
        click.echo(json.dumps({"type": "start", "target": t.describe(), "timeout": timeout,
                               "probe_client": client.client_addr if client else None}))
    else:
        click.echo("%s. Watching for %g s ..." % (t.describe(), timeout))
        if client:
            click.echo("(--probe: connecting from a temporary namespace %s at %s to %s:%d; removed afterwards)"
                       % (client.ns, client.client_addr, client.host_addr, t.port))
    sys.stdout.flush()


def _exit_code(res):
    return EXIT_OK if not res.findings else EXIT_FAULT


@click.command()
@watch_options
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for attempts.")
@click.option("--probe", is_flag=True, help="Make the attempts from a temporary namespace attached to the host.")
@click.option("--fix", "do_fix", is_flag=True, help="Apply the top cause's fix (asks first on a terminal).")
@click.option("--yes", is_flag=True, help="With --fix: do not ask.")
@click.option("--json", "as_json", is_flag=True, help="The diagnosis as one JSON object.")
@click.pass_context
def diagnose(ctx, port, container, proto, netns, timeout, probe, do_fix, yes, as_json):
    """Watch, follow, explain the cause with evidence, and print the fix."""
    from dnattrace.diagnose import run as dg, probeclient
    from dnattrace.watch import resolve as targets

    if port is not None:
        targets.check_port(port)
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    preflight.require_root()
    preflight.require_btf()
    t = targets.resolve(port=port, container=container, proto=proto, netns=netns)
    client = None
    traffic = None
    if probe:
        client = probeclient.ProbeClient(t.host_netns).up()

        def traffic():
            client.start_attempts(t.port, count=2, timeout=1.0)
    try:
        res = dg.run(t, timeout=timeout, traffic=traffic, on_ready=lambda: _ready(t, timeout, as_json, client))
    finally:
        if client:
            client.down()
    _print_result(res, as_json)
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


@click.command()
@click.option("--scenario", default="forwarding-off", show_default=True, help="Which lab scenario to diagnose.")
@click.option("--docker", is_flag=True, help="Use the real Docker engine for the lab host.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def demo(ctx, scenario, docker, as_json):
    """Bring up a broken lab host, send a few SYNs, diagnose, tear the lab down."""
    from dnattrace.diagnose import run as dg, probeclient
    from dnattrace import lab
    from dnattrace.watch import resolve as targets
    from dnattrace.netns import build as net
    from dnattrace.lab import scenarios

    preflight.require_root()
    sc = scenarios.get(scenario)
    t0 = time.monotonic()
    inst = lab.up(sc.id, prefix=net.unique("demo"), docker=docker)
    proc = None
    try:
        t = inst.target()
        if not as_json:
            click.echo("Lab %s (%s): %s" % (inst.name, sc.id, sc.description))
            click.echo("Client %s connects to %s:%d. %s." % (inst.client_addr, inst.target_addr, inst.target_port,
                                                          t.describe()))

        def traffic():
            nonlocal proc
            proc = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 2, 2.0)
        res = dg.run(t, timeout=8.0, traffic=traffic)
        _print_result(res, as_json)
    finally:
        probeclient.stop(proc)
        lab.down(inst.name)
    top = res.findings[0].cause_id if res.findings else "none"
    if not as_json:
        click.echo("Ground truth for %s: %s; diagnosed: %s. Lab removed; %.1f s in all."
                   % (sc.id, sc.cause, top, time.monotonic() - t0))
    ctx.exit(EXIT_OK if top == sc.cause else EXIT_FAULT)
