"""Decode raw watch records (struct dt_event in bpf/watch/watch.h) into model.Step objects.

The layout is mirrored here with the struct module; `RECORD_SIZE` is checked against every record so a
change on one side that is not made on the other fails loudly instead of decoding garbage.
"""
from __future__ import annotations

import collections
import errno
import functools
import socket
import struct
from typing import Callable, Optional

from dnattrace import model

# struct dt_event (bpf/watch/watch.h), little-endian, natural alignment
# (addresses are 16 bytes for both families: IPv4 in the first 4, `family` says which)
_FMT = "<QQQIIIiBBBBBBHB3s16s16sHHI16s16sHH16s16sHH16sIII16s16s128s"
RECORD_SIZE = struct.calcsize(_FMT)
_FIELDS = ("ts skb location netns ifindex reason priority point hook stage proto tcp_flags ctinfo caplen "
           "family pad saddr daddr sport dport ct_status ct_osrc ct_odst ct_osport ct_odport ct_rsrc ct_rdst ct_rsport "
           "ct_rdport gateway cpu seq ack ifname out_ifname pkt").split()

DT_RX, DT_NF, DT_ROUTE, DT_XMIT, DT_DROP, DT_CONSUME, DT_VERDICT, DT_RTRESULT = range(1, 9)
POINT_NAMES = {DT_RX: model.RX, DT_NF: model.NF, DT_ROUTE: model.ROUTE, DT_XMIT: model.XMIT,
               DT_DROP: model.DROP, DT_CONSUME: model.CONSUME, DT_VERDICT: model.VERDICT,
               DT_RTRESULT: model.RTRESULT}
STAGE_NAMES = model.STAGES            # indexed by dt_event.stage (DT_STAGE_* in bpf/watch/watch.h)
DT_STAGE_CHAIN = 16                   # and up: a chain bracket, its link's priority in dt_event.priority
# the priority each stage's link is nominally attached at (capabilities.EDGE/INSIDE_PRIORITIES; a link
# that found its place taken sits one or two further in): a program does not know its own
STAGE_PRIORITY = {"first": -(2 ** 31) + 1, "conntrack": -199, "dnat": -99, "filter": 0, "snat": 101,
                  "last": 2 ** 31 - 2}
NO_CT = 0xFF
UNTRACKED = 0xFE                   # DT_UNTRACKED: a NOTRACK rule made conntrack skip the packet
DT_NEW = 0x80
# enum ip_conntrack_info
CT_STATES = {0: "ESTABLISHED", 1: "RELATED", 2: "NEW", 3: "REPLY", 4: "RELATED_REPLY"}
TCP_FLAG_LETTERS = ((0x02, "S"), (0x10, "A"), (0x01, "F"), (0x04, "R"), (0x08, "P"))


class RawEvent(collections.namedtuple("RawEvent", _FIELDS)):
    """One decoded record, still in kernel terms (addresses as ints, location unresolved). A tuple:
    watch decodes hundreds of thousands of these a second."""
    __slots__ = ()

    @property
    def kind(self) -> int:
        """DT_RX, DT_NF, ... (the point without the new-journey flag)."""
        return self.point & ~DT_NEW

    @property
    def new_journey(self) -> bool:
        """A new journey starts here (the skb was not followed, or held another packet before)."""
        return bool(self.point & DT_NEW)

    @property
    def packet(self) -> bytes:
        """The IP packet bytes captured at this point (up to 128; none unless capturing)."""
        return self.pkt[: self.caplen]


_FULL = struct.Struct(_FMT)
_SHORT = struct.Struct(_FMT[: -len("128s")])   # a record without packet bytes (not capturing)
SHORT_SIZE = _SHORT.size


def decode(record: bytes) -> RawEvent:
    if len(record) == SHORT_SIZE:
        return RawEvent._make(_SHORT.unpack(record) + (b"",))
    if len(record) != RECORD_SIZE:
        raise ValueError("watch record is %d bytes, expected %d or %d: bpf/watch/watch.h and events.py disagree"
                         % (len(record), SHORT_SIZE, RECORD_SIZE))
    return RawEvent._make(_FULL.unpack(record))


_ZERO = bytes(16)


@functools.lru_cache(maxsize=4096)
def ip(family: int, addr: bytes) -> str:
    """A 16-byte address as the kernel wrote it (network order) to text: IPv4 is its first 4 bytes."""
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return socket.inet_ntoa(addr[:4])


def port(port_be: int) -> int:
    return socket.ntohs(port_be)


@functools.lru_cache(maxsize=256)
def flags_text(flags: int) -> str:
    return "".join(letter for bit, letter in TCP_FLAG_LETTERS if flags & bit)


@functools.lru_cache(maxsize=1024)
def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@functools.lru_cache(maxsize=8192)
def _tuple(family, proto, saddr, sport, daddr, dport) -> Optional[model.Tuple5]:
    if saddr == _ZERO and daddr == _ZERO:
        return None
    return model.Tuple5(proto, ip(family, saddr), port(sport), ip(family, daddr), port(dport))


def to_step(ev: RawEvent, symbolize: Callable[[int], str] = hex, reason_name: Callable[[int], str] = str,
            netns_name: Callable[[int], str] = str) -> model.Step:
    """Turn a raw event into a Step; the callables resolve kernel addresses, reasons and namespaces."""
    kind = ev.kind
    point = POINT_NAMES.get(kind, "unknown")
    step = model.Step(ts_ns=ev.ts, point=point, netns=ev.netns, netns_name=netns_name(ev.netns) if ev.netns else "",
                      ifname=_name(ev.ifname), out_ifname=_name(ev.out_ifname),
                      tuple=_tuple(ev.family, ev.proto, ev.saddr, ev.sport, ev.daddr, ev.dport),
                      tcp_flags=flags_text(ev.tcp_flags) if ev.proto == 6 else "",
                      seq=socket.ntohl(ev.seq) if ev.proto == 6 and ev.seq else None)
    if kind == DT_NF:
        step.hook = model.HOOKS[ev.hook] if ev.hook < len(model.HOOKS) else str(ev.hook)
        if ev.stage >= DT_STAGE_CHAIN:
            step.stage, step.priority = "chain", ev.priority
        else:
            step.stage = STAGE_NAMES[ev.stage] if ev.stage < len(STAGE_NAMES) else str(ev.stage)
            step.priority = STAGE_PRIORITY.get(step.stage)
        if ev.ctinfo == UNTRACKED:
            step.ct = model.CtInfo(state="UNTRACKED")
        elif ev.ctinfo != NO_CT:
            step.ct = model.CtInfo(
                state=CT_STATES.get(ev.ctinfo, str(ev.ctinfo)), status=ev.ct_status,
                orig=_tuple(ev.family, ev.proto, ev.ct_osrc, ev.ct_osport, ev.ct_odst, ev.ct_odport),
                reply=_tuple(ev.family, ev.proto, ev.ct_rsrc, ev.ct_rsport, ev.ct_rdst, ev.ct_rdport))
    elif kind == DT_ROUTE:
        err = struct.unpack("<i", struct.pack("<I", ev.reason))[0]
        step.route = model.RouteInfo(table=ev.priority, oif=_name(ev.out_ifname), err=err, dst=ip(ev.family, ev.daddr),
                                     gateway=ip(ev.family, ev.gateway) if ev.gateway != _ZERO else "",
                                     reverse=bool(ev.stage))
        step.tuple = None   # a route lookup carries a flow key, not the packet's ports
    elif kind in (DT_DROP, DT_CONSUME):
        step.location = symbolize(ev.location) if ev.location else ""
        if kind == DT_DROP:
            step.reason = reason_name(ev.reason)
    elif kind == DT_VERDICT:
        step.hook = model.HOOKS[ev.hook] if ev.hook < len(model.HOOKS) else str(ev.hook)
        step.reason = "NF_DROP" if struct.unpack("<i", struct.pack("<I", ev.reason))[0] < 0 else "NF_STOLEN"
    elif kind == DT_RTRESULT:
        step.location = symbolize(ev.location) if ev.location else ""   # dst->input: ip_forward, ip_error, ...
        ret = struct.unpack("<i", struct.pack("<I", ev.reason))[0]
        if ret < 0:                   # e.g. EXDEV: the reverse-path filter refused the source
            step.reason = errno.errorcode.get(-ret, str(ret))
    return step
