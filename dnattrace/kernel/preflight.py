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


def has_btf():
    return os.access(BTF_PATH, os.R_OK)


def require_btf():
    if not has_btf():
        raise CannotObserve("this kernel has no BTF (%s): dnattrace needs CONFIG_DEBUG_INFO_BTF" % BTF_PATH)
