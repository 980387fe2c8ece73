"""up / down / list of lab instances: the API behind `dnattrace lab` (see dnattrace/lab/__init__.py)."""
from __future__ import annotations

import os
import re
import time

from dnattrace.errors import UsageError
from dnattrace.netns import build as net, record
from dnattrace.lab import scenarios, state

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")
_TOKEN = re.compile(r"^[a-z0-9]{1,9}$")


PODMAN = ("healthy", "forwarding-off")      # the scenarios with a --podman variant


class LabError(UsageError):
    """A lab instance could not be made (the partial instance has been removed)."""


def _token(name):
    """Interface names are limited to 15 characters: a short prefix for those, the name when it fits."""
    return name if _TOKEN.match(name) else net.unique("dl")


def up(scenario_id, prefix=None, docker=False, podman=False):
    """Build scenario `scenario_id` (namespace variant, or real Docker with docker=True); an Instance.

    The instance is named `prefix`, or after the scenario. Anything made before a failure (or a SIGTERM /
    Ctrl-C) is removed again before the error propagates.
    """
    sc = scenarios.get(scenario_id)
    if podman and sc.id not in PODMAN:
        raise UsageError("scenario %s has no --podman variant (those that do: %s)" % (sc.id, ", ".join(PODMAN)))
    if docker and not sc.docker:
        raise UsageError("scenario %s has no --docker variant (those that do: %s)"
                         % (sc.id, ", ".join(s.id for s in scenarios.SCENARIOS if s.docker)))
    name = prefix or (sc.id + ("-podman" if podman else "-docker" if docker else ""))
    if not _NAME.match(name):
        raise UsageError("bad lab instance name %r: use up to 31 letters, digits, '-' or '_'" % name)
    token = _token(name)
    if podman:
        from dnattrace.lab import podman_lab as variant
    elif docker:
        from dnattrace.lab import docker_lab as variant
    else:
        from dnattrace.lab import topology as variant
    me = os.getpid()
    inst = state.Instance(name=name, scenario=sc.id, docker=docker or podman, podman=podman, token=token, created=time.time(),
                          builder={"pid": me, "start": state.process_start(me)}, **variant.describe(name, token, sc))
    existing = state.load(name)
    if existing is not None or not state.create(inst):
        existing = existing or state.load(name)
        raise UsageError("lab instance %s is already up (scenario %s); run `dnattrace lab down %s` first"
                         % (name, existing.scenario if existing else "?", name))
    try:
        variant.build(inst, sc)
        inst.complete = True
        inst.save()
    except BaseException as e:
        state.undo(inst)
        if isinstance(e, (net.NetError, OSError)):
            raise LabError("lab up %s failed and was undone: %s" % (sc.id, e)) from e
        raise
    return inst


def get(name):
    """The running instance `name`; UsageError when there is none."""
    inst = state.load(name)
    if inst is None:
        raise UsageError("no lab instance named %s (running: %s)" % (name, ", ".join(state.names()) or "none"))
    return inst


def instances():
    """Every instance that has a state file (running, or left behind by a crash)."""
    return [i for i in (state.load(n) for n in state.names()) if i is not None]


def down(name):
    """Remove everything instance `name` made; a no-op when it is not up. Returns True if it was up."""
    inst = state.load(name)
    if inst is None:
        return False
    errors = state.undo(inst)
    if errors:
        raise LabError("lab down %s left some objects behind: %s" % (name, "; ".join(errors)))
    return True


def down_all(match=None):
    """Remove every instance (or those whose name starts with `match`), including leftovers of crashed
    runs (their sysctls are restored). Returns the names removed."""
    done, errors = [], []
    for inst in instances():
        if match and not inst.name.startswith(match):
            continue
        errs = state.undo(inst)
        (errors.extend(errs) if errs else done.append(inst.name))
    if not match:
        state.remove_orphans()
        done += ["%s (left by a killed diagnose --probe)" % r for r in record.sweep()]
    if errors:
        raise LabError("lab down --all left some objects behind: %s" % "; ".join(errors))
    return done
