"""Kernel addresses to names ("ip_error+0x68"), from /proc/kallsyms.

Why a sorted array and bisect: drop locations arrive as raw return addresses; there are ~120k text
symbols, read once per process, and each lookup must be cheap when a table is rendered every second.
The table is kept compact (addresses in an array('Q'), names in one bytes blob with offsets): as
Python tuples it cost 25 MB, most of watch's memory budget.
"""
from __future__ import annotations

import bisect
import re
import functools
import struct
from array import array
from typing import Optional

from dnattrace.errors import CannotObserve
from dnattrace.kernel import bootcache

KALLSYMS = "/proc/kallsyms"
MODULES = "/proc/modules"
_TEXT_TYPES = frozenset("tTwW")
# the padding in front of each function (call thunks, CFI): code never returns into it
_PADDING = ("__pfx_", "__cfi_")
# Suffixes the compiler gives a function's copies (ip_rcv_finish_core.constprop.0, foo.isra.0.cold)
_SUFFIX = re.compile(r"(\.(constprop|isra|part|cold|llvm|lto_priv)(\.\d+)?)+$")


def base_name(function: str) -> str:
    """A function's name without the compiler's suffixes: sites are compared by it, since 6.1 drops in
    `ip_rcv_finish_core.constprop.0` where 6.18 drops in `ip_rcv_finish_core`."""
    return _SUFFIX.sub("", function)


# No kernel function is this long: an address further past the last symbol is not inside any of them.
_MAX_OFFSET = 1 << 20


class Symbols:
    """A sorted table of text symbols; resolve() maps an address to (name, offset, module)."""

    def __init__(self, lines):
        # /proc/kallsyms is in address order except for modules: build the compact table while
        # reading, and sort afterwards only when needed (peak memory matters as much as the end state)
        addrs, offsets, blob = array("Q"), array("I"), bytearray()
        core_end, in_order = 0, True
        for line in lines:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _TEXT_TYPES or parts[2].startswith(_PADDING):
                continue
            addr = int(parts[0], 16)
            if addrs and addr == addrs[-1]:
                continue     # an alias at the same address: the first listed is kept
            in_order = in_order and (not addrs or addr > addrs[-1])
            if len(parts) > 3:
                name = parts[2] + "\t" + parts[3].strip("[]")
            else:
                name = parts[2]
                core_end = max(core_end, addr)
            addrs.append(addr)
            offsets.append(len(blob))
            blob += name.encode()
        offsets.append(len(blob))
        if addrs and max(addrs) == 0:
            raise CannotObserve("kernel symbol addresses read as zero (/proc/kallsyms): run as root "
                                "(or set kernel.kptr_restrict=0)")
        if not in_order:
            addrs, offsets, blob = _sorted(addrs, offsets, blob)
        self._addrs, self._offsets, self._blob = addrs, offsets, bytes(blob)
        self._core_end = core_end
        self.reload = None        # set by load(): re-reads the table when the module list changed

    def _entry(self, i):
        text = self._blob[self._offsets[i]:self._offsets[i + 1]].decode()
        name, _, module = text.partition("\t")
        return name, module or None

    def __len__(self):
        return len(self._addrs)

    def resolve(self, addr):
        """(name, offset, module or None), or None when the address is not inside a known function."""
        if self.reload is not None and addr > self._core_end:
            self.reload(self)      # module space: a module loaded since the table was read?
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr - self._addrs[i] >= _MAX_OFFSET:
            return None
        name, module = self._entry(i)
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


def _sorted(addrs, offsets, blob):
    """The table in address order (of several names at one address, the first listed)."""
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    a, o, b = array("Q"), array("I"), bytearray()
    for i in order:
        if a and a[-1] == addrs[i]:
            continue
        a.append(addrs[i])
        o.append(len(b))
        b += blob[offsets[i]:offsets[i + 1]]
    o.append(len(b))
    return a, o, b


def parse(text):
    """Symbols from kallsyms text (tests feed recorded samples)."""
    return Symbols(text.splitlines())


def _modules():
    try:
        with open(MODULES) as f:
            return " ".join(line.split(None, 1)[0] for line in f)
    except OSError:
        return ""


def _read(path):
    try:
        with open(path) as f:
            return Symbols(f)
    except OSError as e:
        raise CannotObserve("cannot read %s: %s" % (path, e.strerror)) from None


# The table of the running kernel is kept for the boot (kernel/bootcache.py) in its compact form:
# reading and parsing /proc/kallsyms costs 150-250 ms of CPU, which a watch paid when its first followed
# packet needed a name (on a busy host, in the middle of the traffic it watches). Loaded modules and
# where they sit are part of the key: a module loaded or reloaded since makes the file stale.
BOOT_CACHE = "kallsyms.bin"
_HEAD = struct.Struct("<QQQQ")


def _module_layout() -> str:
    try:
        with open(MODULES) as f:
            return " ".join("%s:%s:%s" % (p[0], p[1], p[-1]) for p in map(str.split, f) if len(p) >= 6)
    except OSError:
        return ""


def _to_bytes(t: Symbols) -> bytes:
    return (_HEAD.pack(len(t._addrs), len(t._offsets), len(t._blob), t._core_end)
            + t._addrs.tobytes() + t._offsets.tobytes() + t._blob)


def _from_bytes(data: bytes) -> Optional[Symbols]:
    try:
        n, m, b, core_end = _HEAD.unpack_from(data)
        pos = _HEAD.size
        addrs, offsets = array("Q"), array("I")
        addrs.frombytes(data[pos:pos + 8 * n])
        pos += 8 * n
        offsets.frombytes(data[pos:pos + 4 * m])
        pos += 4 * m
        blob = data[pos:pos + b]
    except (struct.error, ValueError):
        return None
    if len(addrs) != n or len(offsets) != m or len(blob) != b or m != n + 1:
        return None
    t = Symbols(())
    t._addrs, t._offsets, t._blob, t._core_end = addrs, offsets, blob, core_end
    return t


def _read_kept(path):
    """The running kernel's table from this boot's file when its key still holds, else read (and kept)."""
    if path != KALLSYMS:
        return _read(path)
    key = bootcache.boot_key(_module_layout())
    data = bootcache.load_bytes(BOOT_CACHE, key)
    table = _from_bytes(data) if data else None
    if table is None:
        table = _read(path)
        bootcache.store_bytes(BOOT_CACHE, key, _to_bytes(table))
    return table


@functools.lru_cache(maxsize=1)
def load(path=KALLSYMS):
    """The running kernel's symbols, read once per process (from this boot's file when the modules are
    the same), and again when the module list changes (a drop in a module loaded after start, nf_tables
    say, must not take a neighbour's name)."""
    table = _read_kept(path)
    seen = {"modules": _modules()}

    def reload(symbols):
        now = _modules()
        if now != seen["modules"]:
            seen["modules"] = now
            fresh = _read(path)
            symbols.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "reload"})

    table.reload = reload
    return table


_text_symbols: set | None = None


def has_function(name: str, path=KALLSYMS) -> bool:
    """Whether a kernel function is in kallsyms (an inlined one cannot be hooked by fexit or kprobe).
    Raises OSError when kallsyms cannot be read. The set is read once per process."""
    global _text_symbols
    if _text_symbols is None:
        with open(path) as f:
            _text_symbols = {parts[2] for parts in map(str.split, f) if parts[1] in "tT"}
    return name in _text_symbols
