"""`dnattrace demo`: the reference case end to end: a broken lab host up, a few SYNs, diagnose, lab
down, and the diagnosis checked against the scenario's ground truth. It lives in the lab, which uses the
product; the product never imports the lab."""
from __future__ import annotations

import time

import click

from dnattrace.errors import EXIT_FAULT, EXIT_OK
from dnattrace.kernel import preflight


@click.command(epilog="\b\nExample:\n  sudo dnattrace demo --scenario rp-filter")
@click.option("--scenario", default="forwarding-off", show_default=True, help="Which lab scenario to diagnose.")
@click.option("--docker", is_flag=True, help="Use the real Docker engine for the lab host.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def demo(ctx, scenario, docker, as_json):
    """Bring up a broken lab host, send a few SYNs, diagnose, tear the lab down."""
    from dnattrace import lab
    from dnattrace.diagnose import engine, probeclient, run
    from dnattrace.lab import scenarios
    from dnattrace.netns import build
    from dnattrace.output import diagnosis

    preflight.require_root()
    sc = scenarios.get(scenario)
    t0 = time.monotonic()
    inst = lab.up(sc.id, prefix=build.unique("demo"), docker=docker)
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
        res = run.run(t, timeout=8.0, traffic=traffic)
        diagnosis.show(res, as_json)
    finally:
        probeclient.stop(proc)
        lab.down(inst.name)
    top = engine.top_cause(res.findings)
    if not as_json:
        click.echo("Ground truth for %s: %s; diagnosed: %s. Lab removed; %.1f s in all."
                   % (sc.id, sc.cause, top, time.monotonic() - t0))
    ctx.exit(EXIT_OK if top == sc.cause else EXIT_FAULT)
