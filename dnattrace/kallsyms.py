"""Kernel addresses to names ("ip_error+0x68"), from /proc/kallsyms.

Why a sorted array and bisect: drop locations arrive as raw return addresses; there are ~120k text
symbols, read once per process, and each lookup must be cheap when a table is rendered every second.
"""
from __future__ import annotations

import bisect
import functools

from dnattrace.errors import CannotObserve

KALLSYMS = "/proc/kallsyms"
_TEXT_TYPES = frozenset("tTwW")
# No kernel function is this long: an address further past the last symbol is not inside any of them.
_MAX_OFFSET = 1 << 20


class Symbols:
    """A sorted table of text symbols; resolve() maps an address to (name, offset, module)."""

    def __init__(self, lines):
        entries = {}
        for line in lines:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _TEXT_TYPES:
                continue
            addr = int(parts[0], 16)
            module = parts[3].strip("[]") if len(parts) > 3 else None
            # several names can share an address (aliases): keep the first, as the kernel lists it
            entries.setdefault(addr, (parts[2], module))
        if entries and max(entries) == 0:
            raise CannotObserve("kernel symbol addresses read as zero (/proc/kallsyms): run as root "
                                "(or set kernel.kptr_restrict=0)")
        self._addrs = sorted(entries)
        self._names = [entries[a] for a in self._addrs]

    def __len__(self):
        return len(self._addrs)

    def resolve(self, addr):
        """(name, offset, module or None), or None when the address is not inside a known function."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr - self._addrs[i] >= _MAX_OFFSET:
            return None
        name, module = self._names[i]
        return name, addr - self._addrs[i], module

    def format(self, addr):
        """'function+0xoff' (with ' [module]' for a module symbol), or the bare hex address."""
        hit = self.resolve(addr)
        if hit is None:
            return "%#x" % addr
        name, off, module = hit
        text = "%s+%#x" % (name, off)
        return "%s [%s]" % (text, module) if module else text

    def function(self, addr):
        """Just the function name (or the hex address): what grouping by site and diagnose match on."""
        hit = self.resolve(addr)
        return hit[0] if hit else "%#x" % addr


def parse(text):
    """Symbols from kallsyms text (tests feed recorded samples)."""
    return Symbols(text.splitlines())


@functools.lru_cache(maxsize=1)
def load(path=KALLSYMS):
    """The running kernel's symbols, read once per process."""
    try:
        with open(path) as f:
            return Symbols(f)
    except OSError as e:
        raise CannotObserve("cannot read %s: %s" % (path, e.strerror)) from None
