"""What rootful Podman knows about a container, through its CLI (`podman inspect`, JSON): the same
ContainerInfo as docker_state (Podman's inspect output has Docker's shape: State.Pid, NetworkSettings.Ports
and .Networks). Asked only when Docker does not know the name; no Podman means no container from it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Optional

from dnattrace.errors import DnattraceError, UsageError
from dnattrace.evidence.docker_state import ContainerInfo, PortBinding, _info

TIMEOUT_S = 20


def available() -> bool:
    return shutil.which("podman") is not None


def _podman(*args) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["podman"] + list(args), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DnattraceError("podman %s did not answer in %d s" % (args[0], TIMEOUT_S)) from None


def container(name_or_id: str) -> ContainerInfo:
    """The Podman container by name or id; UsageError when Podman is missing or has none."""
    if not available():
        raise UsageError("no container named %s" % name_or_id)
    p = _podman("container", "inspect", "--format", "json", name_or_id)
    if p.returncode != 0:
        raise UsageError("no container named %s" % name_or_id)
    try:
        return _info(json.loads(p.stdout)[0])
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise DnattraceError("podman inspect %s: unexpected output (%s)" % (name_or_id, e)) from None


def monitors_running() -> bool:
    """Whether a container monitor process runs (conmon, or conmon-rs: comm "conmonrs"). Every running
    Podman container has one, so without any Podman runs nothing, and `podman ps` (a Go program's start,
    ~50 ms of CPU that watch's start-up would share its two cores with) need not be asked."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().startswith("conmon"):
                        return True
            except OSError:     # gone meanwhile
                continue
    return False


def running() -> list[ContainerInfo]:
    """Every running Podman container; [] without Podman."""
    if not available() or not monitors_running():
        return []
    ids = _podman("ps", "-q", "--no-trunc").stdout.split()
    if not ids:
        return []
    p = _podman("container", "inspect", "--format", "json", *ids)
    try:
        return [_info(a) for a in json.loads(p.stdout or "[]")]
    except (ValueError, KeyError, TypeError):
        return []


def publisher(host_port: int, proto: str = "tcp") -> Optional[tuple[ContainerInfo, PortBinding]]:
    """The running Podman container that publishes host_port, and the binding; None when none does."""
    for info in running():
        for b in info.ports:
            if b.host_port == host_port and b.proto == proto:
                return info, b
    return None
