"""A small reader of the kernel's own type information (BTF, /sys/kernel/btf/vmlinux), enough to read an
enum's names and values.

Why: the names of drop reasons (enum skb_drop_reason) and their numbers change between kernels, so they
are read from the running kernel and never written down in dnattrace. Pure Python (struct): the format is
a header, a section of type records (each kind followed by a kind-specific tail that must be skipped to
reach the next record) and a section of NUL-terminated strings.
"""
from __future__ import annotations

import functools
import os
import struct

from dnattrace.errors import CannotObserve
from dnattrace.kernel import bootcache

from dnattrace.kernel.objects import BTF_PATH as VMLINUX
MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h) and the size of the data that follows each record.
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = range(1, 9)
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = range(9, 16)
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(16, 20)

_FIXED_TAIL = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_MEMBER_TAIL = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
                    KIND_DATASEC: 12, KIND_ENUM64: 12}
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")


class BtfError(CannotObserve):
    """The BTF blob is missing or not in the expected format (or lacks what was asked of it): a one-line
    error with exit code 3 when nobody handles it."""


def _tail_size(kind, vlen):
    if kind in _PER_MEMBER_TAIL:
        return _PER_MEMBER_TAIL[kind] * vlen
    if kind in _FIXED_TAIL:
        return _FIXED_TAIL[kind]
    if 0 <= kind <= KIND_ENUM64:
        return 0
    raise BtfError("unknown BTF kind %d (a newer BTF format?)" % kind)


def _string(strings, off):
    end = strings.find(b"\0", off)
    return strings[off:end if end >= 0 else len(strings)].decode(errors="replace")


def parse_enums(blob, wanted):
    """{enum name: {member name: value}} for the enums named in `wanted` (ENUM and ENUM64 kinds)."""
    if len(blob) < _HEADER.size:
        raise BtfError("BTF blob too short")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        if magic == 0x9FEB:
            raise BtfError("big-endian BTF is not supported")
        raise BtfError("not BTF (magic %#x)" % magic)
    types_start = hdr_len + type_off
    types_end = types_start + type_len
    strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
    if types_end > len(blob) or len(strings) != str_len:
        raise BtfError("BTF sections run past the end of the blob")
    # Compare names by string offset: decoding every name of ~100k types would dominate the cost.
    wanted_offsets = {}
    for name in wanted:
        needle = b"\0" + name.encode() + b"\0"
        pos = strings.find(needle)
        while pos >= 0:
            wanted_offsets[pos + 1] = name
            pos = strings.find(needle, pos + 1)
    found: dict[str, dict[str, int]] = {}
    unpack = _TYPE.unpack_from
    pos = types_start
    while pos < types_end:
        name_off, info, _size = unpack(blob, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        pos += 12
        tail = _tail_size(kind, vlen)
        if name_off in wanted_offsets and kind in (KIND_ENUM, KIND_ENUM64):
            signed = bool(info >> 31)
            members = {}
            for i in range(vlen):
                if kind == KIND_ENUM:
                    m_off, val = struct.unpack_from("<Ii" if signed else "<II", blob, pos + 8 * i)
                else:
                    m_off, lo, hi = struct.unpack_from("<III", blob, pos + 12 * i)
                    val = (hi << 32) | lo
                    if signed and val >= 1 << 63:
                        val -= 1 << 64
                members[_string(strings, m_off)] = val
            found[wanted_offsets[name_off]] = members
        pos += tail
    if pos != types_end:
        raise BtfError("BTF type section is malformed (records do not end at its end)")
    return found


# The running kernel's enums, once parsed (~60 ms for skb_drop_reason, on watch's path to 'Watching'),
# are kept for the rest of the boot (kernel/bootcache.py), keyed by the BTF file's size and time too.
BOOT_CACHE = "btf-enum-%s.json"     # % the enum's name


@functools.lru_cache(maxsize=None)
def _vmlinux_enum(name, path):
    key = None
    if path == VMLINUX:
        try:
            st = os.stat(path)
            key = bootcache.boot_key(name, st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        cached = bootcache.load(BOOT_CACHE % name, key) if key else None
        if isinstance(cached, dict):
            return cached
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BtfError("cannot read kernel BTF %s: %s" % (path, e.strerror)) from None
    enums = parse_enums(blob, [name])
    if name not in enums:
        raise BtfError("the kernel BTF has no enum %s" % name)
    if key:
        bootcache.store(BOOT_CACHE % name, key, enums[name])
    return enums[name]


def enum_values(name, prefix=None, path=VMLINUX):
    """{member: value} of enum `name` from the kernel's BTF, with `prefix` stripped from member names.

    Example: enum_values("skb_drop_reason", "SKB_DROP_REASON_")["IP_INADDRERRORS"] -> 87 on 6.18.
    Read once per process (the file is ~6 MB); later calls are served from a cache.
    """
    members = _vmlinux_enum(name, path)
    if not prefix:
        return dict(members)
    return {(m[len(prefix):] if m.startswith(prefix) else m): v for m, v in members.items()}


def enum_count(name, path=VMLINUX):
    """How many members the enum has (for skb_drop_reason this includes the final ..._MAX marker)."""
    return len(_vmlinux_enum(name, path))


def drop_reasons(path=VMLINUX):
    """{number: name} of the running kernel's skb drop reasons, names without SKB_DROP_REASON_."""
    return {v: k for k, v in enum_values("skb_drop_reason", "SKB_DROP_REASON_", path).items()}
