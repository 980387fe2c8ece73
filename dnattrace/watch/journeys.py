"""Group steps into journeys (one per skb) and journeys into connections (one per client tuple).

A journey is one packet: it starts at the first step seen for an skb address and ends when the skb is
dropped or consumed, or when nothing has been seen of it for `idle_s` (a packet that left the host by a
real device may be freed much later, or by a path without a tracepoint).

A connection groups the client's packets with the same tuple (so retransmitted SYNs are one attempt
with several transmissions) and the replies: a reply belongs to the connection whose journeys carried
its reversed tuple at some point (before or after NAT), which is how an un-NATed SYN-ACK finds the SYN.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from dnattrace import model


# How many tuple hashes of retired connections a bounded builder remembers (about 4 MB).
RETIRED_TUPLES = 32768


class JourneyBuilder:
    """Feed steps in arrival order; finished journeys come out of add()/flush() as (journey, connection)."""

    def __init__(self, is_request: Callable[[model.Tuple5], Optional[bool]], idle_s: float = 1.0,
                 keep: Optional[Callable[[model.Journey], bool]] = None, trim: bool = False,
                 max_live: int = 0):
        """is_request(tuple) says whether a packet with that first tuple goes towards the service (True),
        comes from it (False), or cannot be told (None: treated as a request). keep(journey), when given,
        drops journeys that do not concern us (e.g. never entered the host being diagnosed).

        A long watch on a busy port must stay small (60 MB at any rate): trim keeps only the first and
        the last step of a journey once it was handed out (its outcome and the tuples that match its
        replies are kept; watch has printed the rest), and max_live (0: no limit) caps the connections
        kept whole, retiring the longest quiet first (retire()). diagnose keeps everything: it explains."""
        self.is_request = is_request
        self.keep = keep
        self.trim = trim
        self.max_live = max_live
        self.idle_ns = int(idle_s * 1e9)
        self.open: dict[int, model.Journey] = {}
        self.connections: list[model.Connection] = []
        self._by_tuple: dict[model.Tuple5, model.Connection] = {}
        # the connection a tuple belonged to before a client reused its port (bounded, oldest out): a
        # reply that left before the new connection's SYN arrived is the old one's (its closing RST)
        self._before: dict[model.Tuple5, model.Connection] = {}
        # journeys finished by idleness, kept a while: a packet parked in a queue (waiting for ARP, say)
        # can still be dropped seconds later, and that end belongs to the same journey
        self._expired: dict[int, model.Journey] = {}
        self._conn_of: dict[int, model.Connection] = {}
        self._last_seen: dict[int, int] = {}               # id(connection) -> ts of its last journey
        self.retired: list[model.Connection] = []          # quiet ones, journeys cut to first and end
        self.retired_untold = 0                            # quiet ones beyond the cap: only counted
        self.untold_outcomes: dict[str, int] = {}          # ... by outcome, so every connection is accounted
        self.retired_early = 0                             # retired before they were quiet (max_live)
        # a retired connection by the hashes of its tuples (bounded, oldest out): its row (a Connection)
        # or, when it has none, a one-item list holding the outcome it is counted under. A late packet
        # of it (the reply of a connection retired early) updates that, instead of starting a new one.
        # Hashes, not tuples: a second of a busy port retires tens of thousands of them.
        self._retired_tuples: dict[int, object] = {}
        self.late_journeys = 0                             # journeys of retired connections, not shown
        self.keyless = 0                                   # journeys without a tuple: no connection
        # journeys just ended by a drop, by skb: a hook's verdict (fexit nf_hook_slow) is reported after
        # the drop inside the hook; one that arrives in a later batch joins its journey here
        self._dropped: dict[int, model.Journey] = {}

    # -- journeys --

    def add(self, step: model.Step, skb: int, new: bool = False) -> list[tuple[model.Journey, model.Connection]]:
        """Add one step (new: the kernel says a new packet starts here, even if the skb address is
        known); returns journeys that finished because of it."""
        done = []
        if step.point == model.VERDICT and skb not in self.open and skb in self._dropped:
            late = self._dropped.pop(skb)
            late.steps.append(step)
            late.steps.sort(key=lambda s: s.ts_ns)
            return done
        if new and skb in self.open:
            done += self._finished(self.open.pop(skb))
        if skb not in self.open and not new and skb in self._expired:
            self.open[skb] = self._expired.pop(skb)
        j = self.open.get(skb)
        if j is None:
            j = self.open[skb] = model.Journey(skb=skb)
        if not step.netns and j.steps:
            step.netns, step.netns_name = j.steps[-1].netns, j.steps[-1].netns_name
        j.steps.append(step)
        if step.point in (model.DROP, model.CONSUME):
            del self.open[skb]
            if step.point == model.DROP:
                self._dropped[skb] = j
                if len(self._dropped) > 256:
                    del self._dropped[next(iter(self._dropped))]
            done += self._finished(j)
        return done

    def expire(self, now_ns: int) -> list[tuple[model.Journey, model.Connection]]:
        """Finish journeys idle for longer than idle_s (now_ns on the same clock as the events)."""
        stale = [skb for skb, j in self.open.items() if now_ns - j.last.ts_ns > self.idle_ns]
        out = []
        for skb in stale:
            j = self._expired[skb] = self.open.pop(skb)
            out += self._finished(j)
        for skb in [k for k, j in self._expired.items() if now_ns - j.last.ts_ns > 10 * self.idle_ns]:
            del self._expired[skb]
        if self.max_live:       # a bounded watch keeps the most recent ones only (oldest first out)
            for skb in list(self._expired)[: max(0, len(self._expired) - self.max_live)]:
                del self._expired[skb]
        return out

    def flush(self) -> list[tuple[model.Journey, model.Connection]]:
        out = [pair for j in self.open.values() for pair in self._finished(j)]
        self.open.clear()
        return out

    def open_replies(self) -> list[model.Connection]:
        """Connections with a reply still on its way (seen, not finished): already answered, even if
        that reply's skb will be freed silently (TCP frees received segments without a tracepoint)."""
        out = []
        for j in self.open.values():
            t = next((s.tuple for s in j.steps if s.tuple), None)
            if t is not None and self.is_request(t) is False:
                conn = self._by_tuple.get(t.reversed())
                if conn is not None and conn not in out:
                    out.append(conn)
        return out

    # -- connections --

    def _finished(self, j: model.Journey) -> list[tuple[model.Journey, model.Connection]]:
        j.steps.sort(key=lambda s: s.ts_ns)
        if self.keep is not None and not self.keep(j):
            return []
        done = self._finish(j)
        return [done] if done else []

    def handed_out(self, j: model.Journey):
        """The caller is done with journey j (printed it): with trim, keep only what the summary and
        reply matching need."""
        if self.trim:
            _cut(j)

    def _finish(self, j: model.Journey) -> Optional[tuple[model.Journey, model.Connection]]:
        annotate_routes(j)
        if id(j) in self._conn_of:       # finished before by idleness, now with its real end
            return j, self._conn_of[id(j)]
        tuples = j.tuples() + [t for s in j.steps if s.ct for t in (s.ct.orig,) if t]
        if not tuples:
            # no step carried its addresses (its first events were lost): it belongs to no attempt that
            # can be named, and a connection without a key would be a row of nothing
            self.keyless += 1
            return None
        first = tuples[0]
        j.direction = "reply" if first is not None and self.is_request(first) is False else "request"
        conn = None
        if j.direction == "reply":
            for t in tuples:
                conn = self._by_tuple.get(t.reversed())
                if conn:
                    if _opened_after(conn, j):
                        conn = self._before.get(t.reversed(), conn)
                    break
        else:
            for t in tuples:
                conn = self._by_tuple.get(t)
                if conn:
                    break
            if conn is not None and reuses_port(conn, j):
                conn = None
                for t in tuples:          # its reply must find the new connection, not the old one
                    old = self._by_tuple.pop(t, None)
                    if old is not None:
                        self._before[t] = old
                for t in list(self._before)[: max(0, len(self._before) - 4096)]:
                    del self._before[t]
        # a SYN opens a new attempt even on the tuple of a retired connection: a busy client comes back
        # to a port within seconds, and its new connection is not a late packet of the old one
        if conn is None and self._retired_tuples and not (j.direction == "request" and j.first.tcp_flags == "S"):
            retired = next((self._retired_tuples[h] for h in map(hash, tuples) if h in self._retired_tuples), None)
            if retired is not None:
                self._late(retired, j)
                return None
        if conn is None:
            key = first if j.direction == "request" else first.reversed()
            conn = model.Connection(key=key)
            self.connections.append(conn)
        (conn.replies if j.direction == "reply" else conn.requests).append(j)
        self._conn_of[id(j)] = conn
        self._last_seen[id(conn)] = j.last.ts_ns
        for t in tuples:
            if j.direction == "reply":
                self._by_tuple.setdefault(t.reversed(), conn)
            else:
                self._by_tuple.setdefault(t, conn)
        return j, conn


    def retire(self, now_ns: int, after_s: float = 30.0, keep_rows: int = 1000):
        """Forget the journeys of connections quiet for `after_s` (and, over max_live, of the longest
        quiet), keeping a light summary of the first keep_rows and the outcome counts of the rest, so a
        long watch on a busy port stays small and still accounts for every connection."""
        quiet = [c for c in self.connections if now_ns - self._last_seen.get(id(c), now_ns) > after_s * 1e9]
        if self.max_live and len(self.connections) - len(quiet) > self.max_live:
            gone = {id(c) for c in quiet}
            rest = sorted((c for c in self.connections if id(c) not in gone), key=lambda c: self._last_seen.get(id(c), 0))
            early = rest[: len(rest) - self.max_live]
            self.retired_early += len(early)
            quiet += early
        if not quiet:
            return
        gone = {id(c) for c in quiet}
        self.connections = [c for c in self.connections if id(c) not in gone]
        tuples_of: dict[int, list] = {}
        for t in [t for t, c in self._by_tuple.items() if id(c) in gone]:
            tuples_of.setdefault(id(self._by_tuple.pop(t)), []).append(t)
        for t in [t for t, c in self._before.items() if id(c) in gone]:
            del self._before[t]
        for j in [k for k, c in self._conn_of.items() if id(c) in gone]:
            del self._conn_of[j]
        for c in quiet:
            del self._last_seen[id(c)]
            if len(self.retired) >= keep_rows:
                self.retired_untold += 1
                self.untold_outcomes[c.outcome] = self.untold_outcomes.get(c.outcome, 0) + 1
                record = [c.outcome, _first_reset(c)]
            else:
                for j in c.requests + c.replies:
                    _cut(j)
                self.retired.append(c)
                record = c
            if self.max_live:
                for t in tuples_of.get(id(c), ()):
                    self._retired_tuples[hash(t)] = self._retired_tuples[hash(t.reversed())] = record
        for h in list(self._retired_tuples)[: max(0, len(self._retired_tuples) - RETIRED_TUPLES)]:
            del self._retired_tuples[h]

    def _late(self, retired, j: model.Journey):
        """A journey of a retired connection: added to its row, or its count moved to the outcome the
        new packet gives it (a reply that got through: answered; a RST: refused)."""
        self.late_journeys += 1
        if isinstance(retired, model.Connection):
            _cut(j)
            (retired.replies if j.direction == "reply" else retired.requests).append(j)
            return
        if j.direction != "reply" or j.outcome == "dropped" or retired[0] == "answered":
            return
        # journeys finish out of order (a SYN-ACK whose free fires no tracepoint ends by idleness, after
        # the RST that closed the connection): a RST refuses only if no answer came before it
        reset = j.first.ts_ns if "R" in j.first.tcp_flags else None
        if retired[0] == "refused" and (reset is not None or retired[1] is None or retired[1] < j.first.ts_ns):
            return
        new = "refused" if reset is not None else "answered"
        if reset is not None:
            retired[1] = reset
        self.untold_outcomes[retired[0]] -= 1
        if not self.untold_outcomes[retired[0]]:
            del self.untold_outcomes[retired[0]]
        self.untold_outcomes[new] = self.untold_outcomes.get(new, 0) + 1
        retired[0] = new

    def all_connections(self) -> list[model.Connection]:
        return self.retired + self.connections


def _opened_after(conn: model.Connection, j: model.Journey) -> bool:
    """Did conn's first SYN come after journey j began? Then j is no reply of conn."""
    opened = [o.first.ts_ns for o in conn.openers if o.steps]
    return bool(opened) and min(opened) > j.first.ts_ns


def _first_reset(c: model.Connection) -> Optional[int]:
    """When the first RST reply of a connection came, if one did (a retired connection's count keeps it)."""
    return min((j.first.ts_ns for j in c.replies if j.steps and "R" in j.first.tcp_flags), default=None)


def _cut(j: model.Journey):
    """Keep the first step (where it started, its tuple and sequence number) and the end (drop, consume
    or transmit: its outcome); the tuples in between are already registered for reply matching."""
    if len(j.steps) > 3:   # the last two: a transmit before the final consume makes it "sent"
        j.steps = j.steps[:1] + j.steps[-2:]


def reuses_port(conn: model.Connection, j: model.Journey) -> bool:
    """Is request j a SYN of a new connection from a client port that `conn` used before? A retransmitted
    SYN keeps its initial sequence number; a new connection has its own. Busy clients reuse ports within
    seconds (TIME_WAIT reuse), and their new connection must not read as a retransmission of the old."""
    f = j.first
    if f.tcp_flags != "S" or not f.seq:
        return False
    first = next((o.first.seq for o in conn.openers if o.first.seq), 0)
    return bool(first) and first != f.seq


def annotate_routes(j: model.Journey) -> None:
    """Fill RouteInfo.local from what happened next in the same namespace: INPUT means local delivery,
    FORWARD (or a route result of ip_forward) means forwarding; left None when the packet went no further."""
    for i, s in enumerate(j.steps):
        if s.point != model.ROUTE or s.route is None or s.route.reverse:
            continue
        for later in j.steps[i + 1:]:
            if later.point == model.NF and later.netns == s.netns and later.hook in ("INPUT", "FORWARD"):
                s.route.local = later.hook == "INPUT"
                break
            if later.point == model.RTRESULT and later.location:
                fn = later.location.split("+")[0]
                if fn in ("ip_local_deliver", "ip_forward"):
                    s.route.local = fn == "ip_local_deliver"
                    break


def build(steps: Iterable[tuple[int, model.Step, bool]], is_request) -> list[model.Connection]:
    """Build connections from recorded (skb, step, new journey) triples in one go (tests, offline replays)."""
    b = JourneyBuilder(is_request)
    for skb, step, new in steps:
        b.add(step, skb, new)
    b.flush()
    return b.connections


def request_matcher(services: Iterable[tuple[int, int, Optional[str]]]):
    """is_request for a set of service endpoints (proto, port, addr or None): a packet towards one of them
    is a request, a packet from one of them is a reply."""
    services = list(services)

    def hit(proto, addr, port):
        return any(p == proto and q == port and (a is None or a == addr) for p, q, a in services)

    def is_request(t: model.Tuple5) -> Optional[bool]:
        if hit(t.proto, t.dst, t.dport):
            return True
        if hit(t.proto, t.src, t.sport):
            return False
        return None

    return is_request
