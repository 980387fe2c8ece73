"""A minimal pcapng writer: one record per probe point, on an interface block per (device, namespace),
with a comment naming the point, so Wireshark shows a packet's journey hop by hop.

Packets are raw IP (LINKTYPE_RAW = 101: IPv4 or IPv6, told by the version nibble, so one interface block
serves both families): at most points the kernel has no link-layer header to give.
Event times are CLOCK_MONOTONIC; they are shifted to wall-clock time when written.
"""
from __future__ import annotations

import struct
import time

from dnattrace import model

LINKTYPE_RAW = 101      # raw IPv4 or IPv6, no link layer
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006


def _opt(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PcapngWriter:
    def __init__(self, path: str):
        self.f = open(path, "wb")
        self.interfaces: dict[tuple[str, str], int] = {}
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(0, b"")
        self.f.write(_block(_SHB, shb))
        self.records = 0
        self._offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def _interface(self, name: str, ns: str) -> int:
        key = (name, ns)
        if key not in self.interfaces:
            label = ("%s@%s" % (name or "-", ns or "?")).encode()
            # if_tsresol = 9: timestamps in nanoseconds
            body = struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + _opt(2, label) + _opt(9, b"\x09") + _opt(0, b"")
            self.f.write(_block(_IDB, body))
            self.interfaces[key] = len(self.interfaces)
        return self.interfaces[key]

    def write(self, step: model.Step, packet: bytes):
        """One record: the packet as captured at this step, commented with the point's name."""
        iface = self._interface(step.ifname or step.out_ifname, step.netns_name)
        comment = step.where
        if step.point == model.DROP:
            comment += " %s %s" % (step.location, step.reason)
        elif step.point == model.CONSUME:
            comment += " " + step.location
        ts = step.ts_ns + self._offset
        body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(packet), len(packet))
        body += packet + b"\0" * ((-len(packet)) % 4) + _opt(1, comment.encode()) + _opt(0, b"")
        self.f.write(_block(_EPB, body))
        self.records += 1

    def close(self):
        self.f.close()
