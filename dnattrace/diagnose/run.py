"""One-shot root cause: snapshot the evidence, follow the attempts until one fails (or succeeds, or time
runs out), snapshot again, and let the cause catalogue explain what was seen.

It stops as soon as the first attempt has failed (dropped, refused) or been answered, so the cause is
printed within about a second of the first failure; the second snapshot is taken with the ingress
interface and client address the packets really had, so the route lookup in the evidence is the
packet's own. Nothing on the system changes unless apply_fix() is called.
"""
from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from dnattrace import forked
from dnattrace.diagnose import engine
from dnattrace import model
from dnattrace.watch.session import Follower
from dnattrace.evidence import snapshot as snap
from dnattrace.target import Target

# After the first failed attempt, keep watching this long for the reply or more of the story
# (a RST from the container, a retransmission) before explaining.
SETTLE_S = 0.25
# A request delivered this long ago without a reply is decided: no reply is coming.
NO_REPLY_S = 1.5
# An attempt that looks answered may not be: its reply can still be dropped after waiting for a neighbour
# (about 3 s of ARP), or, once the handshake is done, its first data reply can be dropped (a path MTU
# black hole). Keep watching up to this long after the decision for that. The drop ends the wait, so
# the margin over ARP's 3 s costs a failing host nothing; it covers a reader that lags the kernel (an
# emulated kernel under load).
REPLY_WAIT_S, DATA_WAIT_S = 6.0, 1.0
# A diagnosis needs a few attempts, not all of a busy port's traffic: new connections followed a second
# at most (the rest are counted by the kernel). At 1000 a busy port's events overran the reader (hundreds
# of thousands lost a run); 50 a second is a sample of a failing share within a second or two.
MAX_NEW = 50


@dataclass
class Result:
    target: Target
    connections: list[model.Connection] = field(default_factory=list)
    findings: list[engine.Finding] = field(default_factory=list)
    snapshot: Optional[snap.Snapshot] = None
    lost_events: int = 0
    first_failure_at: Optional[float] = None     # monotonic time the first failure was seen
    explained_at: Optional[float] = None         # monotonic time the findings were ready
    watched_s: float = 0.0
    stray_drops: list[dict] = field(default_factory=list)   # the port's packets dropped while not followed

    @property
    def seen(self) -> bool:
        return any(c.requests for c in self.connections)

    @property
    def healthy(self) -> bool:
        return self.seen and not self.findings and all(not engine.failing(c) for c in self.connections)

    @property
    def representative(self) -> Optional[model.Connection]:
        failing = [c for c in self.connections if engine.failing(c)]
        pool = failing or [c for c in self.connections if c.requests]
        return max(pool, key=lambda c: c.attempts) if pool else None


def _unanswered(connections) -> bool:
    """A request was delivered to a socket NO_REPLY_S ago and nothing came back: a service answers a SYN
    (or a datagram it serves) within milliseconds, so waiting for the whole timeout would add nothing."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return any(not c.replies and any(j.outcome == "delivered" and now - j.last.ts_ns > NO_REPLY_S * 1e9
                                     for j in c.requests) for c in connections)


def _decided(c: model.Connection) -> bool:
    """The attempt's fate is known: dropped, refused or answered."""
    return bool(c.replies) or any(j.outcome == "dropped" for j in c.openers)


def _wait_needed(builder) -> float:
    """How long after the decision to keep watching: REPLY_WAIT_S while a TCP reply has not been seen
    leaving (parked on a neighbour, say: it may still be dropped), or while the client sent data after
    the handshake and no data reply was seen (its first data reply may be dropped: a path MTU black hole;
    the server may take a moment to answer); DATA_WAIT_S while a handshake was answered and the client
    sent nothing yet; else 0."""
    first = lambda j: next((s.tuple for s in j.steps if s.tuple), None)
    replies = [j for j in builder.open.values() if first(j) is not None and builder.is_request(first(j)) is False]
    replies += [j for c in builder.connections for j in c.replies]
    tcp = [j for j in replies if first(j) is not None and first(j).proto == 6]
    if any(not j.left for j in tcp):
        return REPLY_WAIT_S
    def data(f):
        return bool(f) and "S" not in f and "R" not in f
    flags = [j.first.tcp_flags for j in tcp]
    if any("S" in f and "R" not in f for f in flags) and not any(data(f) for f in flags):
        sent = any(data(j.first.tcp_flags) for c in builder.connections for j in c.requests if j.steps)
        return REPLY_WAIT_S if sent else DATA_WAIT_S
    return 0.0


def run(t: Target, timeout: float = 10.0, on_journey: Optional[Callable] = None,
        traffic: Optional[Callable[[], None]] = None, on_ready: Optional[Callable[[], None]] = None,
        caps=None, local=None, client: Optional[str] = None) -> Result:
    """Watch until an attempt is decided or `timeout` passes. An attempt seen in time whose reply may
    still fail (_wait_needed) is followed up to REPLY_WAIT_S past the timeout: cut off, a reply parked
    on a neighbour would be neither answer nor drop. Once the probes are attached, on_ready() is called
    (to tell the user or a script), then traffic() (to make attempts: demo, --probe). client: follow only
    the attempts from this address (--probe's own)."""
    res = Result(target=t)
    before = forked.lookup(snap.Snapshot.take, t.host_netns, t.container_netns, t, counters_only=True)
    start = time.monotonic()
    follower = Follower(t, caps=caps, max_new=MAX_NEW, local=local, only_client=client)
    with follower:
        if on_ready:
            on_ready()
        if traffic:
            traffic()

        def seen(j, c):
            if res.first_failure_at is None and _decided(c):
                res.first_failure_at = time.monotonic()
            if on_journey:
                on_journey(j, c)

        deadline = time.monotonic() + timeout

        def settled():
            """Stop SETTLE_S after the first attempt was decided (a reply on its way counts, and so does a
            request delivered to the service that has had no reply for NO_REPLY_S), or later while an
            answered-looking attempt may still fail (_wait_needed); at the deadline when nothing was
            decided, and at most REPLY_WAIT_S past it when something was."""
            now = time.monotonic()
            if res.first_failure_at is None and (follower.builder.open_replies()
                                                 or _unanswered(follower.builder.connections)):
                res.first_failure_at = now
            if res.first_failure_at is None:
                return now >= deadline
            if now >= deadline + REPLY_WAIT_S:
                return True
            if now < res.first_failure_at + SETTLE_S:
                return False
            return now >= res.first_failure_at + max(SETTLE_S, _wait_needed(follower.builder))

        # run() also finishes what is still open at the end: replies on their way count as seen
        follower.run(seen, stop=settled, poll_ms=50)
        res.watched_s = time.monotonic() - start
    res.lost_events = follower.lost_events
    res.connections = [c for c in follower.builder.connections if c.requests or c.replies]
    res.stray_drops = list(follower.unfollowed_drops)
    first = next((j for c in res.connections for j in c.requests), None)
    ingress = client = None
    if first is not None:
        rx = next((s for s in first.steps if s.point == model.RX), None)
        ingress = rx.ifname if rx else None
        client = first.tuples()[0].src if first.tuples() else None
    after = forked.lookup(snap.Snapshot.take, t.host_netns, t.container_netns, t, ingress=ingress, client=client)
    hops = _unanswered_next_hops(res.connections)
    if hops:
        after.holders = forked.lookup(locate, hops, t.host_netns)
    res.snapshot = after
    res.findings = engine.explain(res.connections, after, snap.diff(before, after), seconds=res.watched_s,
                                  stray_drops=res.stray_drops)
    res.explained_at = time.monotonic()
    return res


def _unanswered_next_hops(connections) -> list[str]:
    """Where failing packets were routed: each one's destination and its next hop (gateway), from its
    last forward route decision. The layer-2 and routing replays ask who on this host holds them (the
    path to the holder against the path the route took)."""
    out = set()
    for c in connections:
        if not engine.failing(c):
            continue
        for j in c.requests + c.replies:
            if j.outcome in ("delivered", "sent"):
                continue
            for st in reversed(j.routes()):
                if st.route and not st.route.reverse and st.route.dst:
                    out.update(a for a in (st.route.dst, st.route.gateway) if a)
                    break
    return sorted(out)[:8]


def locate(addrs, host_netns) -> dict:
    """{address: the links of the namespace on this host that holds it (ip netns, Docker, Podman), or None
    when none does}. Runs in a look-up child: it asks Docker and reads other namespaces."""
    from dnattrace.netns.names import Namer
    from dnattrace.netns.enter import inode
    from dnattrace.watch.resolve import owner_netns
    namer, out = Namer(), {}
    for a in addrs:
        path = owner_netns(a, host_netns)
        out[a] = snap.read_links(namer.name(inode(path)), path) if path else None
    return out


def apply_fix(finding: engine.Finding) -> list[tuple[str, str]]:
    """Run the finding's fix commands; returns (command, what it printed) for each. Stops at a failure."""
    done = []
    for cmd in finding.fix or []:
        try:
            p = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            done.append((cmd, "FAILED: %s" % e))
            break
        out = (p.stdout + p.stderr).strip()
        done.append((cmd, out if p.returncode == 0 else "FAILED (%d): %s" % (p.returncode, out)))
        if p.returncode != 0:
            break
    return done
