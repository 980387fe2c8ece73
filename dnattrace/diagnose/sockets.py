"""Socket decisions replayed: a packet that reached the namespace it was meant for and found no socket
listening on its port there."""
from __future__ import annotations

from typing import Optional

from dnattrace.diagnose.facts import Facts, not_dnated
from dnattrace.diagnose.replay import Cause, Match, Replay


def match_no_listener(f: Facts) -> Optional[Match]:
    refused = f.conn is not None and f.conn.outcome == "refused"
    no_socket = f.reason == "NO_SOCKET"
    if f.seen and not (refused or no_socket):
        return None
    if f.journey is not None and f.journey.direction == "reply":
        return None     # a reply the client has no socket for: the service did answer
    ns = f.ns
    if refused and not no_socket and f.conn.replies:
        ns = f.snapshot.by_inode(f.conn.replies[0].first.netns)
    port = f.dest[1] if f.seen else f.snapshot.target.service_port
    if not f.seen and (f.snapshot.container is None or ns is not f.snapshot.container):
        ns = f.snapshot.container
        if ns is None:
            return None
    listening = [l for l in ns.listeners if l.port == port]
    usable = [l for l in listening if l.accepts(f.dest[0]) or not f.dest[0]]
    if not f.seen and usable:
        return None
    s = Replay()
    if f.seen:
        s.add(3, True, f.drop_line() if no_socket else "the reply was a RST (connection refused)")
        if not_dnated(f):
            s.contradict("the packet came for the published port %s/%d and reached %s without its DNAT: the "
                         "service is not meant to listen there" % (f.snapshot.target.proto, f.snapshot.target.port,
                                                                   f.ns.name))
    if usable and f.seen:
        s.contradict("%s listens on port %d in %s and accepts %s (read after the drop)" % (
            usable[0], port, ns.name, f.dest[0] or "the packet's address"))
    s.add(3, not usable, "nothing listens on %s port %d in %s%s" % (
        f.snapshot.target.proto, port, ns.name,
        " (only on %s)" % ", ".join(str(l) for l in listening) if listening else ""))
    loop = [l for l in listening if l.loopback_only]
    hint = " It listens only on %s, which a forwarded packet cannot reach; bind it to 0.0.0.0." % loop[0] \
        if loop and not usable else ""
    return Match(s, "The packet reached %s, but no socket listens on port %d there, so the kernel answers "
                    "with a RST. Start the service (or publish the port it really listens on).%s"
                 % (ns.name, port, hint)).at("%s port %d in %s (no listening socket)" % (f.snapshot.target.proto, port, ns.name))


def _refute_no_listener(f: Facts) -> Optional[str]:
    port, addr = f.dest[1], f.dest[0]
    for ns in [e for e in (f.snapshot.container, f.ns) if e is not None]:
        ls = [l for l in ns.listeners if l.port == port and (not addr or l.accepts(addr))]
        if ls:
            return "%s listens in %s" % (ls[0], ns.name)
    return None


CAUSES = (
    Cause("no-listener", "Nothing listens on the target port", match_no_listener, refute=_refute_no_listener),
)
