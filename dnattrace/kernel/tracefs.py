"""tracefs: where the kernel's trace events live (classic tracepoints, their format files, kprobe_events).

Classic tracepoints are attached by id, read from tracefs, and the kfree_skb format file names the drop
reasons when BTF cannot; so tracefs must be mounted. It is mounted on demand when it is not.
DNATTRACE_TRACEFS overrides the place (tests point it at a path where mounting must fail).
"""
from __future__ import annotations

import os
import re
import subprocess

from dnattrace.errors import CannotObserve

DEFAULT = "/sys/kernel/tracing"
ENV = "DNATTRACE_TRACEFS"


def path():
    """Where dnattrace expects tracefs: DNATTRACE_TRACEFS if set, else /sys/kernel/tracing."""
    return os.environ.get(ENV) or DEFAULT


def is_mounted(where=None):
    """True when a tracefs is mounted exactly at `where` (per /proc/self/mountinfo)."""
    where = os.path.realpath(where or path())
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and right.split()[:1] == ["tracefs"] and fields[4] == where:
                    return True
    except OSError:
        pass
    return False


def ensure():
    """Return the tracefs path, mounting tracefs there first if needed; CannotObserve when that fails."""
    where = path()
    if is_mounted(where):
        return where
    try:
        subprocess.run(["mount", "-t", "tracefs", "tracefs", where], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if is_mounted(where):
        return where
    raise CannotObserve("tracefs is not mounted at %s and could not be mounted: "
                        "mount -t tracefs tracefs %s" % (where, where))


def event_dir(category, name, where=None):
    return os.path.join(where or path(), "events", category, name)


def has_event(category, name, where=None):
    """Whether the classic tracepoint category:name exists on this kernel."""
    return os.path.isdir(event_dir(category, name, where))


_SYMBOL = re.compile(r'\{\s*(\d+),\s*"([A-Za-z0-9_]+)"\s*\}')


def drop_reasons(where=None):
    """{name: number} of skb drop reasons, from the __print_symbolic table of skb:kfree_skb's format file.

    A fallback for kernels where BTF cannot be read; it lists the reasons the kernel prints (it leaves out
    NOT_DROPPED_YET, CONSUMED and MAX, which are not drops). Empty when the tracepoint has no reason field.
    """
    with open(os.path.join(event_dir("skb", "kfree_skb", where), "format")) as f:
        text = f.read()
    fmt = text.partition("print fmt:")[2]
    return {name: int(num) for num, name in _SYMBOL.findall(fmt)}
