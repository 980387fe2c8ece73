"""What does not change while a kernel runs, kept in RUN_DIR for the rest of the boot: the capability
trials' answers (capabilities.py), enums read from the kernel's BTF (btf.py) and the kernel's symbol
table (kallsyms.py, keyed by the modules loaded too). Each file carries its
key (boot id, kernel build, and whatever else its answer depends on); a file with another key is not
used, and one that cannot be written (a read-only /run) only means the next run works it out again."""
from __future__ import annotations

import json
import os

from dnattrace.paths import RUN_DIR


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_key(*more) -> list:
    """This boot of this kernel build, plus `more` (JSON values)."""
    return [_read("/proc/sys/kernel/random/boot_id"), _read("/proc/version"), *more]


def path(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def load(name: str, key: list):
    """The value stored under `name` with this key, else None."""
    try:
        with open(path(name)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d.get("value") if isinstance(d, dict) and d.get("key") == key else None


def store(name: str, key: list, value):
    """Keep value (JSON) under `name` for this key; written whole or not at all."""
    _write(name, json.dumps({"key": key, "value": value}).encode())


def load_bytes(name: str, key: list):
    """The bytes stored under `name` with this key (store_bytes), else None."""
    try:
        with open(path(name), "rb") as f:
            head = f.readline()
            if json.loads(head) != key:
                return None
            return f.read()
    except (OSError, ValueError):
        return None


def store_bytes(name: str, key: list, data: bytes):
    """Keep data under `name` for this key: a line of JSON (the key), then the bytes."""
    _write(name, json.dumps(key).encode() + b"\n" + data)


def _write(name: str, data: bytes):
    target = path(name)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = "%s.%d" % (target, os.getpid())
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError:
        pass
