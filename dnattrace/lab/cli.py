"""`dnattrace lab`: list scenarios, bring instances up and down, send bounded client traffic."""
from __future__ import annotations

import json
import os

import click

from dnattrace.commands import options as opt
from dnattrace.errors import CannotObserve, UsageError
from dnattrace.lab import manage, scenarios
from dnattrace.output import tables


def _need_root():
    if os.geteuid() != 0:
        raise CannotObserve("the lab makes namespaces, links and firewall rules: run it as root")


@click.group(epilog="\b\nExample:\n  sudo dnattrace lab up forwarding-off && sudo dnattrace lab traffic forwarding-off")
def lab():
    """Reproducible broken Docker-style hosts in network namespaces, each with its known cause."""


@lab.command("list", epilog="\b\nExample:\n  dnattrace lab list --json")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scenario.")
def list_(as_json):
    """The scenarios and their ground truth."""
    if as_json:
        for s in scenarios.SCENARIOS:
            click.echo(json.dumps(tables.record(s.to_dict(), "scenario")))
        return
    rows = [(s.id, s.cause, "%s / %s" % (s.drop_function, s.drop_reason) if s.drop_function else "-",
             s.drop_ns or "-", "yes" if s.docker else "", s.description) for s in scenarios.SCENARIOS]
    click.echo(tables.grid(rows, ("scenario", "cause", "drop (function / reason)", "netns", "--docker",
                                       "what is broken")))


@lab.command(epilog="\b\nExample:\n  sudo dnattrace lab up no-listener --prefix mylab")
@click.argument("scenario")
@click.option("--prefix", help="Instance name (also the prefix of its namespaces); default: the scenario id.")
@click.option("--docker", "use_docker", is_flag=True, help="Use the real Docker engine for the host.")
@click.option("--podman", "use_podman", is_flag=True,
              help="Use rootful Podman for the host (healthy and forwarding-off).")
def up(scenario, prefix, use_docker, use_podman):
    """Bring up SCENARIO."""
    _need_root()
    if use_docker and use_podman:
        raise UsageError("--docker or --podman, not both")
    inst = manage.up(scenario, prefix=prefix, docker=use_docker, podman=use_podman)
    click.echo("lab %s up (scenario %s%s): the client in netns %s connects to %s:%d"
               % (inst.name, inst.scenario, ", podman" if inst.podman else ", docker" if inst.docker else "", inst.client_ns,
                  inst.target_addr, inst.target_port))


@lab.command(epilog="\b\nExample:\n  sudo dnattrace lab traffic mylab --attempts 3 --json")
@click.argument("name")
@click.option("--attempts", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option("--timeout", default=2.0, show_default=True, type=opt.Seconds(0.05, 30))
@click.option("--json", "as_json", is_flag=True)
def traffic(name, attempts, timeout, as_json):
    """Send ATTEMPTS bounded TCP+HTTP requests from the client of instance NAME; exit 1 if any failed."""
    _need_root()
    inst = manage.get(name)
    r = inst.traffic(attempts=attempts, timeout=timeout)
    if as_json:
        click.echo(json.dumps(tables.record(dict(r.to_dict(), name=inst.name), "traffic")))
    else:
        rows = [(i + 1, "ok" if a["ok"] else "FAILED", a["reason"], a["status"] or "", "%.3f" % a["seconds"])
                for i, a in enumerate(r.attempts)]
        click.echo("%s -> %s:%d" % (inst.client_addr, inst.target_addr, inst.target_port))
        click.echo(tables.grid(rows, ("attempt", "result", "reason", "status line", "seconds")))
    return 0 if r.ok else 1


@lab.command(epilog="\b\nExample:\n  sudo dnattrace lab status --json")
@click.option("--json", "as_json", is_flag=True)
def status(as_json):
    """The instances: up, building (its `lab up` still runs) or incomplete (that `lab up` was killed)."""
    insts = manage.instances()
    if as_json:
        for i in insts:
            click.echo(json.dumps(tables.record(i.public_dict(), "instance")))
        return
    if not insts:
        click.echo("no lab instances are up")
        return
    rows = [(i.name, i.status(), i.scenario, "podman" if i.podman else "docker" if i.docker else "netns", i.client_ns, i.host_ns or "(root)",
             "%s:%d" % (i.target_addr, i.target_port), "%s:%d" % (i.container_addr, i.container_port))
            for i in insts]
    click.echo(tables.grid(rows, ("name", "status", "scenario", "variant", "client netns", "host netns", "target",
                                       "container")))


@lab.command(epilog="\b\nExample:\n  sudo dnattrace lab down --all")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every instance, including leftovers of crashed runs.")
def down(name, all_):
    """Remove instance NAME (or --all) and everything it made; an unknown NAME is bad input (exit 2)."""
    _need_root()
    if bool(name) == all_:
        raise UsageError("give an instance name or --all (not both)")
    if all_:
        done = manage.down_all()
        click.echo("removed %d lab instance(s)%s" % (len(done), (": " + ", ".join(done)) if done else ""))
    elif manage.down(name):
        click.echo("lab %s removed" % name)
    else:
        raise UsageError("no lab instance named %s (running: %s)" % (name, ", ".join(i.name for i in manage.instances())
                                                                      or "none"))



