"""Names for network namespaces: what BPF programs report (a namespace's inode number) turned into what a
user knows ("host", an `ip netns` name, a Docker container's name), and back for --netns NAME.

Sources, cheapest first: the root namespace (/proc/1/ns/net), /run/netns/* (ip netns), then Docker
(container State.Pid -> /proc/PID/ns/net) and Podman (`podman ps`, in the same look-up). Docker is asked only when an inode is not known otherwise, at
most once every few seconds (in a child process for watch and drops), and a missing engine is simply no
names from Docker.
"""
from __future__ import annotations

import logging
import os
import time

from dnattrace import forked
from dnattrace.errors import DnattraceError, UsageError

log = logging.getLogger("dnattrace.netns.names")

NETNS_DIR = "/run/netns"
ROOT_NS = "/proc/1/ns/net"
OWN_NS = "/proc/self/ns/net"
HOST = "host"
_DOCKER_RETRY_S = 5.0
# Each Docker question costs a look-up child that imports the SDK (~0.2 s of CPU): while an unnamed
# namespace keeps showing up (a namespace no tool named: podman's, a CNI's) and Docker has no name for
# it, ask half as often each time, down to once every two minutes.
_DOCKER_RETRY_MAX_S = 120.0
_UNKNOWN_RETRY_S = 2.0
_DOCKER_TIMEOUT_S = 10.0


def _inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def root():
    """(inode, path) of the host namespace: init's, or ours when init's cannot be read (a sandbox)."""
    for path in (ROOT_NS, OWN_NS):
        ino = _inode(path)
        if ino is not None:
            return ino, path
    return None, None


def ip_netns():
    """{name: (inode, path)} of the namespaces `ip netns` knows."""
    out = {}
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return out
    for name in names:
        path = os.path.join(NETNS_DIR, name)
        ino = _inode(path)
        if ino is not None:
            out[name] = (ino, path)
    return out


def docker_netns():
    """{container name: (inode, /proc/PID/ns/net)} of running Docker and Podman containers; {} when neither is there.

    In a long-lived watch or drops, which ask this now and then to name a new namespace, it is asked in a
    short-lived child process (dnattrace.forked): the Docker SDK's imports (about 16 MB) must not stay."""
    try:
        return forked.lookup(_containers_netns, timeout=_DOCKER_TIMEOUT_S)
    except DnattraceError as e:   # an engine that hangs: no names from Docker this time
        log.debug("no Docker names: %s", e)
        return {}


def _docker_netns():
    try:
        import docker
        client = docker.from_env(version="auto", timeout=3)
    except Exception as e:   # no SDK, no socket, engine down: no names from Docker
        log.debug("no Docker names: %s", e)
        return {}
    out = {}
    try:
        for c in client.containers.list():
            pid = (c.attrs.get("State") or {}).get("Pid") or 0
            if not pid:
                continue
            path = "/proc/%d/ns/net" % pid
            ino = _inode(path)
            if ino is not None:
                out[c.name] = (ino, path)
    except Exception as e:
        log.debug("Docker listing failed: %s", e)
    finally:
        client.close()
    return out


def _podman_netns():
    """{name: (inode, /proc/PID/ns/net)} of running rootful Podman containers; {} without Podman."""
    import json
    import shutil
    import subprocess
    if not shutil.which("podman"):
        return {}
    try:
        p = subprocess.run(["podman", "ps", "--format", "json"], capture_output=True, text=True,
                           timeout=_DOCKER_TIMEOUT_S - 2)
        listed = json.loads(p.stdout or "[]") if p.returncode == 0 else []
    except (subprocess.TimeoutExpired, ValueError) as e:
        log.debug("podman listing failed: %s", e)
        return {}
    out = {}
    for c in listed:
        pid, names = c.get("Pid") or 0, c.get("Names") or []
        path = "/proc/%d/ns/net" % pid
        ino = _inode(path) if pid and names else None
        if ino is not None:
            out[names[0]] = (ino, path)
    return out


def _containers_netns():
    """Docker's containers, then Podman's (a name Docker has wins)."""
    out = _podman_netns()
    out.update(_docker_netns())
    return out


class Namer:
    """Turns namespace inodes into names; cached, refreshed when an unknown inode shows up."""

    def __init__(self, use_docker=True):
        self.use_docker = use_docker
        self._names: dict[int, str] = {}
        self._docker_checked = -1e9
        self._docker_every = _DOCKER_RETRY_S
        self._unknown: dict[int, float] = {}    # inode -> when a refresh last failed to name it
        self.refresh(docker_too=False)

    def refresh(self, docker_too=True):
        names = {}
        if docker_too and self.use_docker:
            self._docker_checked = time.monotonic()
            for name, (ino, _path) in docker_netns().items():
                names[ino] = name
        for name, (ino, _path) in ip_netns().items():
            names.setdefault(ino, name)
        host, _path = root()
        if host is not None:
            names[host] = HOST
        # keep names already learnt (a container that stopped still explains its earlier drops)
        self._names.update(names)

    def name(self, inode):
        if not inode:
            return "?"
        if inode not in self._names:
            # an unnamed namespace (a client's, say) shows up on every event of its packets: look
            # again at most every few seconds, not per event (watch calls this on its hot path)
            now = time.monotonic()
            if now - self._unknown.get(inode, -1e9) < _UNKNOWN_RETRY_S:
                return "netns:%d" % inode
            asked = now - self._docker_checked >= self._docker_every
            self.refresh(docker_too=asked)
            if asked and self.use_docker:
                self._docker_every = (_DOCKER_RETRY_S if inode in self._names
                                      else min(2 * self._docker_every, _DOCKER_RETRY_MAX_S))
            if inode not in self._names:
                self._unknown[inode] = now
        return self._names.get(inode, "netns:%d" % inode)


def resolve(name):
    """(inode, path) of the namespace a user named with --netns; UsageError when there is none."""
    if name in (HOST, "root"):
        return root()
    if name.startswith("netns:") and name[6:].isdigit():
        ino = int(name[6:])
        return ino, None
    found = ip_netns().get(name)
    if found:
        return found
    found = docker_netns().get(name.lstrip("/"))
    if found:
        return found
    raise UsageError("unknown network namespace %r: not 'host', an `ip netns` name or a running container"
                     % name)
