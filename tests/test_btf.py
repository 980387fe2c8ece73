"""dnattrace.kernel.btf: on a BTF blob built here (every kind with a tail the walker must skip) and on the
running kernel's own BTF."""
import os
import struct

import pytest

from dnattrace.kernel import btf


class Blob:
    """Builds a little-endian BTF blob: add strings and type records, then bytes()."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""

    def s(self, text):
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def t(self, name, kind, vlen, size_or_type, tail=b"", kind_flag=0):
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name) if name else 0, info, size_or_type) + tail

    def bytes(self, magic=0xEB9F):
        hdr = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def sample():
    b = Blob()
    b.t("int", btf.KIND_INT, 0, 4, struct.pack("<I", 32))
    b.t("pair", btf.KIND_STRUCT, 2, 8, struct.pack("<III", b.s("a"), 1, 0) + struct.pack("<III", b.s("b"), 1, 32))
    b.t("", btf.KIND_FUNC_PROTO, 1, 1, struct.pack("<II", b.s("x"), 1))
    b.t("arr", btf.KIND_ARRAY, 0, 0, struct.pack("<III", 1, 1, 4))
    b.t("color", btf.KIND_STRUCT, 0, 0)        # the same name as the enum below, another kind: ignored
    b.t("color", btf.KIND_ENUM, 3, 4, struct.pack("<Ii", b.s("COLOR_RED"), 0) + struct.pack("<Ii", b.s("COLOR_BLUE"), 7)
        + struct.pack("<Ii", b.s("COLOR_NEG"), -2), kind_flag=1)
    b.t("tag", btf.KIND_DECL_TAG, 0, 1, struct.pack("<i", -1))
    b.t("big", btf.KIND_ENUM64, 1, 8, struct.pack("<III", b.s("BIG_ONE"), 0, 1))
    b.t("v", btf.KIND_VAR, 0, 1, struct.pack("<I", 1))
    b.t(".data", btf.KIND_DATASEC, 1, 4, struct.pack("<III", 9, 0, 4))
    return b


def test_enums_are_found_past_every_kind_of_tail():
    found = btf.parse_enums(sample().bytes(), ["color", "big", "absent"])
    assert found["color"] == {"COLOR_RED": 0, "COLOR_BLUE": 7, "COLOR_NEG": -2}
    assert found["big"] == {"BIG_ONE": 1 << 32}
    assert "absent" not in found


def test_bad_magic_and_truncation_are_errors():
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.parse_enums(sample().bytes(magic=0x1234), ["color"])
    with pytest.raises(btf.BtfError):
        btf.parse_enums(sample().bytes()[:40], ["color"])


def test_enum_values_strips_the_prefix(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(sample().bytes())
    assert btf.enum_values("color", "COLOR_", path=str(path)) == {"RED": 0, "BLUE": 7, "NEG": -2}
    assert btf.enum_count("color", path=str(path)) == 3
    with pytest.raises(btf.BtfError, match="no enum"):
        btf.enum_values("nothing", path=str(path))


def test_running_kernel_drop_reasons():
    if not os.path.exists(btf.VMLINUX):
        pytest.fail("this kernel has no BTF at %s" % btf.VMLINUX)
    values = btf.enum_values("skb_drop_reason", "SKB_DROP_REASON_")
    assert btf.enum_count("skb_drop_reason") == len(values)
    # the classic tracepoint's format file prints the same table: the two must agree
    fmt = "/sys/kernel/tracing/events/skb/kfree_skb/format"
    assert os.path.exists(fmt), "no kfree_skb format file (tracefs not mounted? scripts/bootstrap mounts it)"
    import re
    text = open(fmt).read()
    pairs = re.findall(r'\{ (\d+), "([A-Z0-9_]+)" \}', text)
    assert pairs, "no reason table in %s" % fmt
    for number, name in pairs:
        assert values[name] == int(number), name
    assert btf.drop_reasons()[values["NO_SOCKET"]] == "NO_SOCKET"


def test_the_running_kernels_enum_is_kept_for_the_boot(tmp_path):
    """The first process parses the BTF and keeps the enum in RUN_DIR; the next reads it from there (the
    same table); a file written for another boot or kernel build is not used."""
    import json
    import subprocess
    import sys
    if not os.path.exists(btf.VMLINUX):
        pytest.fail("this kernel has no BTF at %s" % btf.VMLINUX)
    env = dict(os.environ, DNATTRACE_RUN_DIR=str(tmp_path))
    code = "import json; from dnattrace.kernel import btf; print(json.dumps(btf.drop_reasons()))"

    def run():
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    cache = tmp_path / (btf.BOOT_CACHE % "skb_drop_reason")
    parsed = run()
    assert cache.exists()
    kept = run()
    assert kept == parsed and "NO_SOCKET" in kept.values()
    d = json.loads(cache.read_text())
    d["key"][0] = "another boot"
    d["value"] = {"SKB_DROP_REASON_WRONG": 2}
    cache.write_text(json.dumps(d))
    again = run()
    assert again == parsed, "a file from another boot was used"
    assert json.loads(cache.read_text())["key"][0] != "another boot", "the file was not renewed"
