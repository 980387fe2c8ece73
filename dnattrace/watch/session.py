"""Following packets live: the tracer's raw events become steps (symbolized, named), steps become
journeys and connections. Used by `watch` and by `diagnose`.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from dnattrace import model
from dnattrace.drops import counter as drops
from dnattrace.kernel import btf, kallsyms
from dnattrace.netns import enter, names as netns
from dnattrace.signals import stop_signals
from dnattrace.watch import abi, infer, journeys
from dnattrace.watch.resolve import local_addresses
from dnattrace.watch.tracer import FilterEntry, WatchTracer


class _LazySymbols:
    """kallsyms, read when the first address must be named (after the probes are attached): reading it
    (100-200 ms) is off the path to 'Watching'."""

    def __init__(self):
        self._table = None

    def __getattr__(self, name):
        if self._table is None:
            self._table = kallsyms.load()
        return getattr(self._table, name)


# Connections a bounded watch keeps whole (about 3 KB each once trimmed); the rest are retired to a
# summary row or an outcome count, so watch stays under its 60 MB budget at any connection rate.
MAX_LIVE = 1000


def _ts(ev) -> int:
    return ev.ts


class Follower:
    """Run the watch tracer for a Target and call on_journey(journey, connection) as packets finish."""

    def __init__(self, target, all_packets=False, idle_s=1.0, caps=None, pcap=None, max_new=0,
                 hook_detail=False, local=None, bounded=False, tracer=None, only_client=None):
        """local: the watched namespaces' addresses when the caller already read them
        (resolve_with_addresses); else start() reads them. bounded: a long watch keeps its memory
        bounded (journeys trimmed once handed out, at most MAX_LIVE connections kept whole). tracer: a
        WatchTracer made (and loading, load_early) before the target was known, with the same options."""
        self.target = target
        # diagnose --probe: its own attempts only, told by their tuple (the probe's client address); another
        # --probe beside it, or the port's other clients, are not its attempts
        self.only_client = only_client
        filters = [FilterEntry(*e) for e in target.endpoints()]
        if tracer is None:
            tracer = WatchTracer(filters, target.netns_paths(), all_packets=all_packets, capture=pcap is not None,
                                 max_new=max_new, hook_detail=hook_detail, caps=caps)
        self.tracer = tracer.aim(filters, target.netns_paths())
        inodes = {enter.inode(p) for p in target.netns_paths()}
        # only packets that entered the host (or container) being watched: another host on this
        # machine (a lab, a nested setup) may use the same addresses and ports
        self.builder = journeys.JourneyBuilder(journeys.request_matcher(target.endpoints()), idle_s=idle_s,
                                               keep=self._keep, trim=bounded, max_live=MAX_LIVE if bounded else 0)
        self._inodes = inodes
        self._local: Optional[dict[int, set[str]]] = local
        try:
            self.reasons = btf.drop_reasons()
        except btf.BtfError:
            # no enum skb_drop_reason: the kernel predates drop reasons (5.17); they are inferred from
            # the drop site when a journey finishes (watch/infer.py)
            self.reasons = {}
        # what this kernel cannot show: said in every journey, never silently left out
        self.unobservable = [p for p in ("netfilter hooks", "route decision") if p not in self.tracer.chosen]
        # an IPv6 journey's route decision comes from its own tracepoint (fib6_table_lookup)
        self.unobservable6 = [p for p in ("netfilter hooks",) if p in self.unobservable] + \
            (["route decision"] if "IPv6 route decision" not in self.tracer.chosen else [])
        self.namer = netns.Namer()
        self.pcap = pcap
        self.events_seen = 0
        self.new_drops: list[dict] = []   # drops of packets not followed since run() last passed them on
        self.lost_events = 0      # events the ring buffer had no room for
        self.not_followed = 0     # matching connections not followed: over the max_new rate, or shed
        self.admitted = 0         # connections the kernel admitted (followed from their opening packet)
        self.shed = 0             # of not_followed: turned away while the ring was filling (the reader lagged)
        self.unfollowed_drops: list[dict] = []   # their packets' drops, by site (read at close)
        self.symbols = _LazySymbols()
        self._drops = drops.Tally(drops.Describer(self.namer, self.symbols, self.reasons))
        self._retired_at = 0

    def start(self):
        if self._local is None:
            self._local = local_addresses(self.target.netns_paths())
        self.tracer.start()
        return self

    def _keep(self, j: model.Journey) -> bool:
        """Keep journeys that entered a watched namespace; settle their route decisions there: a
        destination that is not one of the namespace's addresses must be forwarded."""
        if not any(s.netns in self._inodes for s in j.steps):
            return False
        if self.only_client and not any(self.only_client in (t.src, t.dst) for t in j.tuples()):
            return False
        family = next((st.tuple.family for st in j.steps if st.tuple), 4)
        j.unobservable = self.unobservable6 if family == 6 else self.unobservable
        if not self.reasons:
            infer.infer_drop_reasons(j)
        for s in j.steps:
            if s.point == model.ROUTE and s.route and s.route.local is None and s.netns in self._local:
                s.route.local = s.route.dst in self._local[s.netns]
        return True

    def close(self):
        """Detach everything; the lost-event count is read first so it can still be reported."""
        if self.tracer.started:
            self._read_counters()
            self.unfollowed_drops = self._drops.described(self.tracer.unfollowed_drops())
        self.tracer.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _step(self, ev) -> model.Step:
        return abi.to_step(ev, self.symbols.format, self._reason_name, self.namer.name)

    def _reason_name(self, r: int) -> str:
        return self.reasons.get(r, str(r)) if self.reasons else ""    # "": none reported, inferred later

    def poll(self, timeout_ms=100) -> list:
        """Process what the kernel sent; returns finished (journey, connection) pairs."""
        done = []
        # in time order: a hook's verdict (fexit on nf_hook_slow, reported when the call returns) carries
        # the time the hook was entered, so it comes before a drop inside that hook, reported earlier
        for ev in sorted(self.tracer.poll(timeout_ms), key=_ts):
            self.events_seen += 1
            step = self._step(ev)
            if self.pcap is not None and ev.caplen:
                self.pcap.write(step, ev.packet)
            done += self.builder.add(step, ev.skb, ev.new_journey)
        before = self.lost_events
        self._read_counters()
        if self.lost_events > before:
            # the ring buffer was full: any journey open now may miss steps, so none of them may be
            # reported as complete without saying so
            for j in self.builder.open.values():
                j.lost_events += self.lost_events - before
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        done += self.builder.expire(now)
        # a scan of every connection: once a second is plenty, unless a bounded watch is over its cap
        if now - self._retired_at > 1e9 or (self.builder.max_live and len(self.builder.connections) > 2 * MAX_LIVE):
            self.builder.retire(now)
            self._retired_at = now
            self.new_drops += self._drops.gained(self.tracer.unfollowed_drops())
        return done

    def _read_counters(self):
        st = self.tracer.stats()
        self.lost_events, self.not_followed, self.admitted, self.shed = st.lost, st.not_followed, st.admitted, st.shed

    def accounting(self) -> dict:
        """Every connection the kernel saw open, accounted: admitted (followed: their journeys and
        outcomes are in the builder) or not followed (counted, over --max-rate or shed while the reader
        lagged), and the events lost."""
        return {"admitted": self.admitted, "not_followed": self.not_followed, "shed": self.shed,
                "lost_events": self.lost_events}

    def run(self, on_journey: Callable, duration: Optional[float] = None,
            stop: Optional[Callable[[], bool]] = None, poll_ms: int = 100, on_drops: Optional[Callable] = None,
            until_signal: bool = False):
        """Poll until duration elapses or stop() says so; then finish what is still open. on_drops gets,
        about once a second, the drop sites where packets not followed were dropped since (drops.Describer
        dicts, count = the new drops). until_signal: SIGINT and SIGTERM end the run like the duration
        does, between two polls, instead of interrupting one (see stop_signals)."""
        end = time.monotonic() + duration if duration else None
        with stop_signals(until_signal) as signalled:
            self._run(on_journey, end, stop, poll_ms, on_drops, signalled)

    def _run(self, on_journey, end, stop, poll_ms, on_drops, signalled):
        try:
            while (end is None or time.monotonic() < end) and not (stop and stop()) and not signalled:
                for j, c in self.poll(poll_ms):
                    on_journey(j, c)
                    self.builder.handed_out(j)
                if self.new_drops:
                    if on_drops:
                        on_drops(self.new_drops)
                    self.new_drops = []
        finally:
            for j, c in self.poll(0) + self.builder.flush():
                on_journey(j, c)
