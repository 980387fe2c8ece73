"""dnattrace.kallsyms on a recorded sample of /proc/kallsyms (6.18, root) and on the running kernel."""
import pytest

from dnattrace.kernel import kallsyms
from dnattrace.errors import CannotObserve

SAMPLE = """\
ffffffff81000000 T srso_alias_untrain_ret
ffffffff81000000 T _stext
ffffffff81fbdf90 T nft_do_chain
ffffffff82000000 D some_data
ffffffff8204c370 t ip_error
ffffffff82054970 t ip_rcv_finish_core
ffffffff82094270 T tcp_v4_rcv
ffffffff820a7a70 T __udp4_lib_rcv
ffffffffc000188c t bpf_prog_551e255c984fbf12_nf_first\t[bpf]
ffffffffc0002000 t veth_xmit\t[veth]
"""

UNPRIVILEGED = """\
0000000000000000 T _stext
0000000000000000 t ip_error
"""


def test_resolves_function_and_offset():
    s = kallsyms.parse(SAMPLE)
    assert s.format(0xFFFFFFFF8204C370 + 0x68) == "ip_error+0x68"
    assert s.function(0xFFFFFFFF8204C370 + 0x68) == "ip_error"
    assert s.format(0xFFFFFFFF820A7A70) == "__udp4_lib_rcv+0x0"
    assert s.resolve(0xFFFFFFFF81000010) == ("srso_alias_untrain_ret", 0x10, None)   # first alias wins


def test_data_symbols_are_not_functions():
    s = kallsyms.parse(SAMPLE)
    # some_data (D) is skipped: an address after it belongs to nft_do_chain
    assert s.function(0xFFFFFFFF82000010) == "nft_do_chain"
    assert len(s) == 8


def test_modules_and_unknown_addresses():
    s = kallsyms.parse(SAMPLE)
    assert s.format(0xFFFFFFFFC0002010) == "veth_xmit+0x10 [veth]"
    assert s.format(0x1000) == "0x1000"
    assert s.format(0xFFFFFFFFC0002000 + (2 << 20)) == "%#x" % (0xFFFFFFFFC0002000 + (2 << 20))


def test_zero_addresses_mean_not_root():
    with pytest.raises(CannotObserve, match="root"):
        kallsyms.parse(UNPRIVILEGED)


def test_running_kernel(root):
    s = kallsyms.load()
    assert s is kallsyms.load()                   # read once
    hit = s.resolve(s._addrs[len(s) // 2] + 1)
    assert hit and hit[1] == 1


def test_table_is_read_again_when_a_module_loads(tmp_path, monkeypatch):
    from dnattrace.kernel import kallsyms
    syms, mods = tmp_path / "kallsyms", tmp_path / "modules"
    syms.write_text("ffffffff81000000 T core_a\nffffffff81001000 T core_b\n"
                    "ffffffffc0000000 t old_fn\t[oldmod]\n")
    mods.write_text("oldmod 16384 0 - Live 0x0\n")
    monkeypatch.setattr(kallsyms, "MODULES", str(mods))
    kallsyms.load.cache_clear()
    try:
        table = kallsyms.load(str(syms))
        assert table.format(0xffffffffc0000010) == "old_fn+0x10 [oldmod]"
        assert table.format(0xffffffffc0100020) == "%#x" % 0xffffffffc0100020
        # nf_tables loads after the table was read: its drop site must get its own name
        syms.write_text(syms.read_text() + "ffffffffc0100000 t nft_do_chain\t[nf_tables]\n")
        mods.write_text("nf_tables 16384 0 - Live 0x0\n" + mods.read_text())
        assert table.format(0xffffffffc0100020) == "nft_do_chain+0x20 [nf_tables]"
        assert table.format(0xffffffff81000004) == "core_a+0x4"
    finally:
        kallsyms.load.cache_clear()


def test_the_running_kernels_table_is_kept_for_the_boot(root, tmp_path, monkeypatch):
    """Read once, the table is kept in RUN_DIR and read back the same; a file whose key no longer holds
    (a module loaded, moved or unloaded since: the layout is part of the key) is not used but renewed."""
    from dnattrace.kernel import bootcache
    monkeypatch.setattr(bootcache, "RUN_DIR", str(tmp_path))
    fresh = kallsyms._read_kept(kallsyms.KALLSYMS)
    assert (tmp_path / kallsyms.BOOT_CACHE).exists()
    kept = kallsyms._read_kept(kallsyms.KALLSYMS)
    assert len(kept) == len(fresh) > 10000
    assert (list(kept._addrs), list(kept._offsets), kept._blob, kept._core_end) == \
        (list(fresh._addrs), list(fresh._offsets), fresh._blob, fresh._core_end)
    addr = fresh._addrs[len(fresh) // 2] + 1
    assert kept.format(addr) == fresh.format(addr)
    # another module layout: the file is not used (a wrong table would be: every name is replaced)
    bad = kallsyms._to_bytes(kallsyms.parse("ffffffff81000000 T only_this\n"))
    bootcache.store_bytes(kallsyms.BOOT_CACHE, bootcache.boot_key(kallsyms._module_layout()), bad)
    assert len(kallsyms._read_kept(kallsyms.KALLSYMS)) == 1, "the file with the right key is used"
    monkeypatch.setattr(kallsyms, "_module_layout", lambda: "a_module_loaded_since:4096:0xffffffffc0000000")
    again = kallsyms._read_kept(kallsyms.KALLSYMS)
    # read afresh: the size of the real table (BPF programs that others load come and go in kallsyms)
    assert len(again) > 10000, "a file kept for another module layout was used"
    assert kallsyms._from_bytes(b"truncated") is None
