"""Pure logic of the drop counter: decoding map entries, per-interval differences, grouping."""
import struct

from dnattrace.drops import counter as drops
from dnattrace.kernel import kallsyms

KEY = struct.Struct("<QIIiHHB7x")
IP_ERROR = 0xFFFFFFFF8204C370 + 0x68
UDP = 0xFFFFFFFF820A7A70 + 0x4BC
SYMBOLS = kallsyms.parse("ffffffff8204c370 t ip_error\nffffffff820a7a70 T __udp4_lib_rcv\n")
REASONS = {87: "IP_INADDRERRORS", 3: "NO_SOCKET"}


class Names:
    def name(self, inode):
        return {1: "host", 2: "web"}.get(inode, "netns:%d" % inode)


def entry(location, reason, netns, l4, per_cpu, port=0, stack=-1):
    return KEY.pack(location, reason, netns, stack, 0x0800, port, l4), [struct.pack("<Q", c) for c in per_cpu]


def test_decode_sums_cpus():
    (row,) = drops.decode_rows([entry(IP_ERROR, 87, 1, 6, [3, 4])])
    assert (row.location, row.reason, row.netns, row.l4proto, row.count, row.stack_id) == (IP_ERROR, 87, 1, 6, 7, -1)
    assert KEY.size == 32


def test_deltas_report_only_what_was_gained():
    first = drops.decode_rows([entry(IP_ERROR, 87, 1, 6, [2, 1]), entry(UDP, 3, 1, 17, [5, 0])])
    gained, snap = drops.deltas({}, first)
    assert sorted(r.count for r in gained) == [3, 5]
    second = drops.decode_rows([entry(IP_ERROR, 87, 1, 6, [2, 3]), entry(UDP, 3, 1, 17, [5, 0])])
    gained, snap = drops.deltas(snap, second)
    assert [(r.location, r.count) for r in gained] == [(IP_ERROR, 2)]
    assert drops.deltas(snap, second)[0] == []


def describe(rows):
    d = drops.Describer(Names(), SYMBOLS, REASONS)
    return [d.describe(r, 2.0) for r in rows]


def test_describe_names_everything():
    (d,) = describe(drops.decode_rows([entry(IP_ERROR, 87, 2, 6, [4])]))
    assert d["location"] == "ip_error+0x68" and d["function"] == "ip_error"
    assert d["reason"] == "IP_INADDRERRORS" and "forwarding" in d["meaning"]
    assert (d["netns"], d["proto"], d["rate"], d["address"]) == ("web", "tcp", 2.0, "%#x" % IP_ERROR)
    (unknown,) = describe(drops.decode_rows([entry(IP_ERROR, 999, 7, 0, [1])]))
    assert unknown["reason"] == "reason 999" and unknown["netns"] == "netns:7"


def test_a_kernel_without_drop_reasons_gets_them_by_site_or_unknown():
    """5.10: every reason code is 0; a site with one reason gives it, marked inferred; ip_error has two."""
    d = drops.Describer(Names(), SYMBOLS, {})
    udp, ip_error = (d.describe(r) for r in drops.decode_rows([entry(UDP, 0, 1, 17, [2]), entry(IP_ERROR, 0, 1, 6, [1])]))
    assert (udp["reason"], udp["reason_inferred"]) == ("NO_SOCKET", True) and udp["meaning"].startswith("inferred")
    assert ip_error["reason"] == "unknown" and "no drop reasons" in ip_error["meaning"]
    assert describe(drops.decode_rows([entry(UDP, 3, 1, 17, [1])]))[0]["reason_inferred"] is False


def test_group_merges_and_marks_mixed_fields():
    rows = drops.decode_rows([entry(IP_ERROR, 87, 1, 6, [4]), entry(IP_ERROR, 87, 2, 6, [1]),
                              entry(UDP, 3, 1, 17, [3])])
    described = describe(rows)
    full = drops.group(described)
    assert [r["count"] for r in full] == [4, 3, 1]
    by_reason = drops.group(described, "reason")
    assert [(r["reason"], r["count"], r["netns"]) for r in by_reason] == [
        ("IP_INADDRERRORS", 5, drops.MIXED), ("NO_SOCKET", 3, "host")]
    by_netns = drops.group(described, "netns")
    host = next(r for r in by_netns if r["netns"] == "host")
    assert host["count"] == 7 and host["reason"] == drops.MIXED and host["meaning"] == drops.MIXED
    assert drops.totals(by_netns) == 8
    assert drops.by_function(described)[("ip_error", "IP_INADDRERRORS")] == 5


def test_proto_names():
    assert drops.proto_name(0x0800, 6) == "tcp"
    assert drops.proto_name(0x86DD, 0) == "ipv6"
    assert drops.proto_name(0x86DD, 6) == "tcp6" and drops.proto_name(0x86DD, 58) == "icmpv6"
    assert drops.proto_name(0x0800, 99) == "ip/99"
    assert drops.proto_name(0, 0) == "-"
