"""A record of what a run creates on the host (diagnose --probe's namespace and veth), written before
each object is made, so that a run killed with SIGKILL still leaves a note of what to remove. The next
run that creates something (and `lab down --all`) sweeps the records of runs that are gone.

One JSON file per run under RUN_DIR/made/: the owner's pid and start time (a reused pid is not the
owner) and the objects in creation order. DNATTRACE_RUN_DIR moves RUN_DIR (the tests use their own).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from dnattrace.netns import build as net
from dnattrace.paths import RUN_DIR


def made_dir() -> str:
    return os.path.join(RUN_DIR, "made")


def process_start(pid: int) -> Optional[str]:
    """Start time of a process (field 22 of /proc/PID/stat), to tell a reused pid from its first owner."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Record:
    """The objects one run makes; add() before making each, remove() once all are gone again."""

    def __init__(self, name: str):
        self.path = os.path.join(made_dir(), name + ".json")
        self.pid = os.getpid()
        self.start = process_start(self.pid)
        self.objects: list[dict] = []

    def add(self, kind: str, **fields):
        self.objects.append(dict(kind=kind, **fields))
        os.makedirs(made_dir(), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": self.pid, "start": self.start, "objects": self.objects}, f)
        os.replace(tmp, self.path)

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _undo(obj: dict):
    if obj["kind"] == "netns":
        net.del_netns(obj["name"])
    elif obj["kind"] == "link":
        where = obj.get("netns")        # a namespace path, or None for the current one
        if where is None:
            net.del_link(obj["name"])
        elif os.path.exists(where):
            net.run(["nsenter", "--net=%s" % where, "ip", "link", "del", obj["name"]], check=False)


def owner_alive(rec: dict) -> bool:
    start = rec.get("start")
    return start is not None and process_start(rec.get("pid", 0)) == start


def sweep() -> list[str]:
    """Remove what runs that are gone (killed) left behind; returns the names of their records.
    Records of live runs are left alone: a concurrent diagnose --probe keeps its namespace."""
    removed = []
    try:
        # a run killed between writing its record and renaming it into place leaves the .tmp: it is that
        # run's newest record
        files = sorted(f for f in os.listdir(made_dir()) if f.endswith((".json", ".json.tmp")))
    except FileNotFoundError:
        return removed
    for f in files:
        path = os.path.join(made_dir(), f)
        try:
            with open(path) as fh:
                rec = json.load(fh)
        except ValueError:      # a .tmp cut short by the kill: nothing in it can be undone
            if f.endswith(".tmp") and _older_than(path, 10):
                _unlink(path)
            continue
        except OSError:
            continue      # removed by another sweep
        if owner_alive(rec):
            continue
        for obj in reversed(rec.get("objects", [])):
            _undo(obj)
        _unlink(path)
        removed.append(f.split(".json")[0])
    return removed


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _older_than(path, seconds) -> bool:
    import time
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False
