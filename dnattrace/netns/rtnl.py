"""The three rtnetlink questions `watch` asks before it can start, over a plain netlink socket.

A namespace's addresses, the namespace ids of its veth peers, and the id one namespace gives
another: what target resolution needs to find the container behind a DNAT rule (watch/resolve.py). Asked
with pyroute2 they cost its import (~100 ms and ~20 MB, which a long-lived watch must not keep, so they ran
in a look-up child); here they cost one socket and one dump each (~1 ms), in the watch process itself.
The answers are the same as pyroute2's (tests/test_rtnl.py compares them on real namespaces).
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Optional

from dnattrace.netns.enter import entered

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWNSID, RTM_GETNSID = 88, 90
IFA_ADDRESS = 1
IFLA_LINK_NETNSID = 37
NETNSA_NSID, NETNSA_FD = 1, 3

_HDR = struct.Struct("=IHHII")          # struct nlmsghdr
_ATTR = struct.Struct("=HH")            # struct rtattr / nlattr


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(buf: bytes, off: int, end: int):
    """(type, payload) of each attribute in buf[off:end]."""
    while off + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(buf, off)
        if length < _ATTR.size:
            break
        yield kind & 0x3FFF, buf[off + _ATTR.size:off + length]
        off += _align(length)


def _ask(netns, msg_type: int, flags: int, body: bytes):
    """Send one request in namespace `netns` (a path, None = this one); yields (type, message body) of
    every answer up to the end of a dump or the acknowledgement. An error answer raises OSError."""
    with entered(netns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)   # bound to netns for life
    with s:
        s.bind((0, 0))
        s.send(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body)
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    return
                payload = data[off + _HDR.size:off + length]
                off += _align(length)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return      # the acknowledgement of a request that is not a dump
                yield kind, payload
            if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                return


def addresses(netns=None) -> list[str]:
    """The namespace's addresses (IFA_ADDRESS, as `ip addr` prints them): IPv4, then IPv6 but link-local."""
    out = []
    for family, size in ((socket.AF_INET, 4), (socket.AF_INET6, 16)):
        for kind, msg in _ask(netns, RTM_GETADDR, NLM_F_DUMP, struct.pack("=BBBBI", family, 0, 0, 0, 0)):
            if kind != RTM_NEWADDR or msg[0] != family:
                continue
            for t, v in _attrs(msg, 8, len(msg)):       # after struct ifaddrmsg
                if t == IFA_ADDRESS and len(v) == size:
                    addr = socket.inet_ntop(family, v)
                    if not addr.startswith("fe80:"):
                        out.append(addr)
    return out


def veth_peer_nsids(netns=None) -> set[int]:
    """The namespace ids (as this namespace numbers them) of the peers of its links in other namespaces."""
    out = set()
    for kind, msg in _ask(netns, RTM_GETLINK, NLM_F_DUMP, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != RTM_NEWLINK:
            continue
        for t, v in _attrs(msg, 16, len(msg)):      # after struct ifinfomsg
            if t == IFLA_LINK_NETNSID and len(v) >= 4:
                out.add(struct.unpack_from("=i", v)[0])
    return out


def nsid_of(path: str, netns=None) -> Optional[int]:
    """The id namespace `netns` gives the namespace at `path`, or None when it has none (not linked)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        attr = _ATTR.pack(_ATTR.size + 4, NETNSA_FD) + struct.pack("=I", fd)
        for kind, msg in _ask(netns, RTM_GETNSID, 0, struct.pack("=Bxxx", socket.AF_UNSPEC) + attr):
            if kind != RTM_NEWNSID:
                continue
            for t, v in _attrs(msg, 4, len(msg)):   # after struct rtgenmsg (padded)
                if t == NETNSA_NSID and len(v) >= 4:
                    nsid = struct.unpack_from("=i", v)[0]
                    return None if nsid < 0 else nsid
    finally:
        os.close(fd)
    return None
