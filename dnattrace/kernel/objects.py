"""Where the compiled BPF objects and the kernel's BTF are: one place, so that a wheel, an editable
checkout and the tests all find the same files.

The product's objects (watch, drops, probes) are compiled once by the build step (setup.py) into the
package's bpfobj/ folder and shipped with it; they are CO-RE and relocated by libbpf on the running
kernel. Test-only objects (tests/bpf) are built elsewhere and never shipped.
"""
from __future__ import annotations

import os

BTF_PATH = "/sys/kernel/btf/vmlinux"
OBJECT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpfobj")


def path(name: str) -> str:
    """The compiled object of bpf/NAME/NAME.bpf.c (e.g. path("watch"))."""
    return os.path.join(OBJECT_DIR, "%s.bpf.o" % name)
