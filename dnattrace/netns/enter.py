"""Entering the network namespace a piece of evidence is read from.

Readers run Python code inside the namespace (netlink sockets, /proc/sys and /proc/thread-self/net bind to
the calling thread's namespace) or run a tool there with nsenter (iptables-save, nft, conntrack).
Switching a thread's namespace is setns(2), which Python 3.11 has no binding for: the loader (the only
ctypes user) makes the call, this module turns its errors into what a user can act on.
"""
from __future__ import annotations

import contextlib
import os
import subprocess

from dnattrace.errors import DnattraceError, UsageError


@contextlib.contextmanager
def entered(netns):
    """The block runs in network namespace `netns` (a path, or None for the current one)."""
    if netns is None:
        yield
        return
    if not os.path.exists(netns):
        raise UsageError("network namespace %s is not there" % netns)
    from dnattrace.kernel.loader import BpfError, in_netns
    try:
        ctx = in_netns(netns)
        ctx.__enter__()
    except BpfError as e:
        raise UsageError("cannot enter network namespace %s: %s" % (netns, e)) from None
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


def command_prefix(netns):
    """What to put before a command so it runs in `netns` (empty for the current namespace)."""
    return [] if netns is None else ["nsenter", "--net=%s" % netns]


def run_tool(cmd, netns=None, timeout=15):
    """Run a read-only tool in `netns`; returns stdout. A missing tool or a failure is a DnattraceError."""
    full = command_prefix(netns) + list(cmd)
    if netns is not None and not os.path.exists(netns):
        raise UsageError("network namespace %s is not there" % netns)
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DnattraceError("%s is not installed" % cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise DnattraceError("%s did not answer within %d s" % (cmd[0], timeout)) from None
    if p.returncode != 0:
        raise DnattraceError("%s failed: %s" % (" ".join(cmd), (p.stderr or p.stdout).strip()[:200]))
    return p.stdout


def inode(netns=None) -> int:
    """The namespace's inode: what BPF programs report in Step.netns."""
    return os.stat(netns or "/proc/thread-self/ns/net").st_ino


class Presence:
    """Which watched namespaces are gone: the path removed (`ip netns del`, a lab torn down, a container's
    process ended) or now naming another namespace (a name reused). None is the current namespace,
    which outlives the watch."""

    def __init__(self, paths):
        self.inodes = {p: inode(p) for p in paths if p}
        self.current = any(p is None for p in paths)
        self.gone: list[str] = []

    def _there(self, path) -> bool:
        try:
            return os.stat(path).st_ino == self.inodes[path]
        except OSError:
            return False

    def check(self) -> list[str]:
        """The paths found gone since the last check."""
        new = [p for p in self.inodes if p not in self.gone and not self._there(p)]
        self.gone += new
        return new

    @property
    def nothing_left(self) -> bool:
        return not self.current and len(self.gone) == len(self.inodes)
