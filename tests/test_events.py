"""Decoding of raw watch records (the layout of struct dt_event in bpf/watch/watch.h)."""
import ipaddress
import re
import socket
import struct

import pytest

import hostcc
from dnattrace.watch import abi
from dnattrace import model



def record(**kw):
    fields = dict.fromkeys(abi._FIELDS, 0)
    fields.update({f: b"" for f in ("pad ifname out_ifname pkt saddr daddr ct_osrc ct_odst ct_rsrc ct_rdst "
                                   "gateway").split()})
    fields.update(kw)
    return struct.pack(abi._FMT, *[fields[f] for f in abi._FIELDS])


def be32(addr):
    """An address as the kernel writes it into an event: 16 bytes, IPv4 in the first 4."""
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def be16(port):
    return socket.htons(port)


C_LAYOUT = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "watch.h"
#define OFF(f) printf("%s %zu\n", #f, offsetof(struct dt_event, f))
int main(void) {
    printf("size %zu\n", sizeof(struct dt_event));
    OFF(location); OFF(priority); OFF(point); OFF(caplen); OFF(family); OFF(saddr); OFF(daddr); OFF(ct_status);
    OFF(ct_osrc); OFF(ct_rsrc); OFF(cpu); OFF(seq);
    OFF(ct_rdport); OFF(gateway); OFF(ifname); OFF(out_ifname); OFF(pkt);
    return 0;
}
"""


def test_record_layout_matches_the_c_header(tmp_path):
    """Compile bpf/watch/watch.h with the host compiler and compare sizes and offsets with abi._FMT."""
    c = hostcc.layout(tmp_path, C_LAYOUT, "watch")
    assert int(c.pop("size")) == abi.RECORD_SIZE
    codes = abi._FMT[1:]
    offsets, off = {}, 0
    for name, code in zip(abi._FIELDS, re.findall(r"\d*[a-zA-Z]", codes)):
        size = struct.calcsize("<" + code)
        if code[-1] != "x":
            offsets[name] = off
        off += size
    for name, value in c.items():
        assert offsets[name] == int(value), name


def test_record_without_packet_bytes():
    ev = abi.decode(record(point=abi.DT_RX, caplen=0)[: abi.SHORT_SIZE])
    assert ev.kind == abi.DT_RX and ev.packet == b""


def test_short_record_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        abi.decode(b"\0" * (abi.RECORD_SIZE - 8))


def test_nf_event_with_conntrack_and_dnat():
    raw = record(ts=5, skb=0xffff1, point=abi.DT_NF | abi.DT_NEW, hook=0, stage=2, proto=6, tcp_flags=0x02, family=4,
                 ctinfo=2, saddr=be32("198.51.100.2"), daddr=be32("172.31.0.2"), sport=be16(41822), dport=be16(80),
                 ct_osrc=be32("198.51.100.2"), ct_odst=be32("198.51.100.1"), ct_osport=be16(41822),
                 ct_odport=be16(8080), ct_rsrc=be32("172.31.0.2"), ct_rdst=be32("198.51.100.2"),
                 ct_rsport=be16(80), ct_rdport=be16(41822), netns=77, ifname=b"veth-ext\0")
    ev = abi.decode(raw)
    assert ev.new_journey and ev.kind == abi.DT_NF
    s = abi.to_step(ev, netns_name=lambda n: "host")
    assert (s.point, s.hook, s.stage, s.ifname, s.netns_name) == (model.NF, "PREROUTING", "dnat", "veth-ext", "host")
    assert s.tuple == model.Tuple5(6, "198.51.100.2", 41822, "172.31.0.2", 80)
    assert s.tcp_flags == "S"
    assert s.ct.state == "NEW" and s.ct.dnat == ("172.31.0.2", 80)
    assert s.priority == -99


def test_drop_event_resolves_location_and_reason():
    ev = abi.decode(record(point=abi.DT_DROP, location=0x1234, reason=87, proto=6, tcp_flags=0x12))
    s = abi.to_step(ev, symbolize=lambda a: "ip_error+0x94", reason_name={87: "IP_INADDRERRORS"}.get)
    assert (s.location, s.reason, s.tcp_flags) == ("ip_error+0x94", "IP_INADDRERRORS", "SA")
    assert not ev.new_journey


def test_route_event_carries_the_lookup_not_ports():
    ev = abi.decode(record(point=abi.DT_ROUTE, priority=254, reason=(2 ** 32 - 113), daddr=be32("172.31.0.2"), family=4,
                              out_ifname=b"docker0", stage=1, sport=be16(1), dport=be16(2)))
    s = abi.to_step(ev)
    assert s.tuple is None
    assert (s.route.table, s.route.oif, s.route.err, s.route.dst, s.route.reverse) == (254, "docker0", -113, "172.31.0.2", True)


def test_ipv6_nf_event_with_dnat():
    """An IPv6 record: 16-byte addresses in the packet and in both conntrack tuples (ip6tables DNAT)."""
    raw = record(point=abi.DT_NF, hook=0, stage=5, proto=6, tcp_flags=0x02, family=6, ctinfo=2,
                 saddr=be32("2001:db8:1::2"), daddr=be32("2001:db8:2::2"), sport=be16(50000), dport=be16(80),
                 ct_osrc=be32("2001:db8:1::2"), ct_odst=be32("2001:db8:1::1"), ct_osport=be16(50000),
                 ct_odport=be16(8080), ct_rsrc=be32("2001:db8:2::2"), ct_rdst=be32("2001:db8:1::2"),
                 ct_rsport=be16(80), ct_rdport=be16(50000))
    s = abi.to_step(abi.decode(raw))
    assert s.tuple == model.Tuple5(6, "2001:db8:1::2", 50000, "2001:db8:2::2", 80)
    assert s.ct.orig.dst == "2001:db8:1::1" and s.ct.dnat == ("2001:db8:2::2", 80)


def test_ipv6_route_event_with_gateway():
    ev = abi.decode(record(point=abi.DT_ROUTE, priority=254, family=6, daddr=be32("2001:db8:2::2"),
                           gateway=be32("fe80::1"), out_ifname=b"br0"))
    s = abi.to_step(ev)
    assert (s.route.dst, s.route.gateway, s.route.oif, s.route.err) == ("2001:db8:2::2", "fe80::1", "br0", 0)


def test_ipv4_address_is_the_first_word_only():
    """The family decides how many bytes are the address: an IPv4 event never prints as IPv6."""
    assert abi.ip(4, be32("198.51.100.2")) == "198.51.100.2"
    assert abi.ip(6, be32("::1")) == "::1"
