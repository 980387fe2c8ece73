"""What the host must provide before anything can be observed: root, and the kernel's BTF.

Each check raises CannotObserve with the one sentence a user needs; commands call them first.
"""
from __future__ import annotations

import os

from dnattrace.errors import CannotObserve

from dnattrace.kernel.objects import BTF_PATH


def require_root():
    if os.geteuid() != 0:
        raise CannotObserve("dnattrace needs root (BPF programs, tracefs and other namespaces): "
                            "run it with sudo")


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_caps() -> int:
    """This process's effective capability set (CapEff of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_bpf_privileges():
    """drops needs to load and attach BPF programs and read kernel addresses: root, or CAP_BPF with
    CAP_PERFMON, or CAP_SYS_ADMIN. Without them the first thing to fail is kallsyms reading as zeros,
    whose own advice (kptr_restrict) would not help: name the privileges instead."""
    if os.geteuid() == 0:
        return
    caps = effective_caps()
    if caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return
    raise CannotObserve("dnattrace drops needs root, or the capabilities CAP_BPF and CAP_PERFMON "
                        "(or CAP_SYS_ADMIN), to load BPF programs and read kernel addresses: run it with sudo")


def has_btf():
    return os.access(BTF_PATH, os.R_OK)


def require_btf():
    if not has_btf():
        raise CannotObserve("this kernel has no BTF (%s): dnattrace needs CONFIG_DEBUG_INFO_BTF" % BTF_PATH)
