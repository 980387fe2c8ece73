"""Small primitives for building topologies in network namespaces: namespaces, veth pairs,
addresses, routes, sysctls and commands run inside a namespace. The lab scenarios and the kernel tests
are built from these; everything created is recorded by the caller so it can be torn down again.

They shell out to iproute2/iptables on purpose: the lab must lay rules out exactly as an administrator
(or Docker) would with the same tools, so what dnattrace observes is what users have.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading

from dnattrace.errors import DnattraceError
from dnattrace.netns.enter import entered
from dnattrace.netns.names import NETNS_DIR


class NetError(DnattraceError):
    """A command that builds or removes a topology failed (printed as one line by the CLI)."""


def run(cmd, netns=None, check=True, timeout=30, input=None):
    """Run a command (list) on the host or inside `netns` (an `ip netns` name); returns CompletedProcess.

    In a namespace, `ip` gets `-n` and anything else runs under nsenter: `ip netns exec` also makes a
    mount namespace and remounts /sys for each command, which costs little here but a third of a
    second per command under emulation (the kernel matrix boots guests under TCG), where a lab makes
    dozens of them. Nothing run here reads /sys."""
    if netns:
        cmd = list(cmd)
        cmd = ["ip", "-n", netns] + cmd[1:] if cmd[0] == "ip" else ["nsenter", "--net=" + netns_path(netns)] + cmd
    with _signals_held():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise NetError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()))
    return p


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the command has finished: interrupted while the child was being
    spawned, Python raised before the Popen existed, so nothing killed or waited for `ip netns add`,
    which made its namespace after the undo had looked for it (a lab up stopped half way left it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unique(prefix="dt"):
    """A short unique token for names (interface names are limited to 15 characters)."""
    return prefix + secrets.token_hex(3)


def netns_path(name):
    return os.path.join(NETNS_DIR, name)


def netns_exists(name):
    return os.path.exists(netns_path(name))


def add_netns(name):
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], netns=name)


def del_netns(name):
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)


def netns_inode(name=None):
    """Inode of a named namespace (or of the root namespace when name is None): what BPF programs report."""
    return os.stat(netns_path(name) if name else "/proc/1/ns/net").st_ino


def add_veth(a, b, a_ns=None, b_ns=None):
    """A veth pair a<->b; each end moved into its namespace (None = the current one)."""
    run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
    for dev, ns in ((a, a_ns), (b, b_ns)):
        if ns:
            run(["ip", "link", "set", dev, "netns", ns])
        run(["ip", "link", "set", dev, "up"], netns=ns)


def del_link(name, netns=None):
    run(["ip", "link", "del", name], netns=netns, check=False)


def link_exists(name, netns=None):
    return run(["ip", "link", "show", name], netns=netns, check=False).returncode == 0


def add_addr(dev, cidr, netns=None):
    run(["ip", "addr", "add", cidr, "dev", dev], netns=netns)


def add_route(dst, via=None, dev=None, netns=None):
    cmd = ["ip", "route", "add", dst]
    if via:
        cmd += ["via", via]
    if dev:
        cmd += ["dev", dev]
    run(cmd, netns=netns)


def _sysctl_file(key):
    return "/proc/sys/" + key.replace(".", "/")


def sysctl_get(key, netns=None):
    """A sysctl's value, read in this process: /proc/sys/net answers for the namespace of the thread
    that opens it, so no command is needed."""
    with entered(netns_path(netns) if netns else None):
        try:
            with open(_sysctl_file(key)) as f:
                return f.read().strip()
        except OSError as e:
            raise NetError("reading %s%s failed: %s" % (key, " in " + netns if netns else "", e.strerror)) from None


def sysctl_set(key, value, netns=None):
    with entered(netns_path(netns) if netns else None):
        try:
            with open(_sysctl_file(key), "w") as f:
                f.write(str(value))
        except OSError as e:
            raise NetError("setting %s=%s%s failed: %s" % (key, value, " in " + netns if netns else "",
                                                          e.strerror)) from None


def link_address(dev, netns=None):
    """The MAC address of `dev` (in `netns`)."""
    out = run(["ip", "-j", "link", "show", "dev", dev], netns=netns).stdout
    return json.loads(out)[0]["address"]
