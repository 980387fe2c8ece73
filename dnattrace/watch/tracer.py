"""The kernel side of `watch`: choose watch.bpf.o's programs by what this kernel allows (probed, never
by version), load them, fill the filter map, attach the global tracepoints once and the netfilter links
in every namespace that matters, and hand decoded records to the caller.

Netfilter links are per network namespace, so they are attached in each namespace given (the host's,
and a container's by its /proc/PID/ns/net path); the tracepoints see every namespace.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

from dnattrace.kernel import capabilities, loader, objects, plan
from dnattrace.drops import counter as drops
from dnattrace.netns import enter
from dnattrace.watch import abi

BRACKET_RECHECK_S = 2.0       # how often the chain priorities of the watched namespaces are read again
log = logging.getLogger("dnattrace.watch")

OBJECT = objects.path("watch")
# The event ring: mapped twice into this process (the kernel's wrap-around trick), so its size counts
# double against watch's memory budget. Under --max-rate a second's events fit in 1 MB many times over;
# without a cap (or with --all) the bigger ring rides out bursts.
RING_CAPPED, RING_FULL = 1 << 20, 2 << 20
# Records decoded per poll at most (about 1 KB each once decoded, with their steps): a reader that
# took everything would take events as fast as the kernel writes them, and hold them all at once.
BATCH = 1024


@dataclass(frozen=True)
class FilterEntry:
    """Follow packets of `proto` with `port` (and `addr`, when given: IPv4 or IPv6) as source or
    destination. struct dt_filter_key (watch.h): family 0 and a zero address mean any address."""
    proto: int
    port: int
    addr: Optional[str] = None

    def key(self) -> bytes:
        family, addr = 0, bytes(16)
        if self.addr:
            ip = ipaddress.ip_address(self.addr)
            family, addr = ip.version, ip.packed.ljust(16, b"\0")
        return struct.pack("<BBH", self.proto, family, socket.htons(self.port)) + addr


class Stats(NamedTuple):
    """DT_STAT_* in slot order (watch.h)."""
    emitted: int        # events written to the ring
    lost: int           # events the ring had no room for
    not_followed: int   # connections turned away at their opening packet (over max_new, or shed)
    admitted: int       # connections followed from their opening packet
    shed: int           # of not_followed: turned away because the ring was filling (the reader lagged)


def choose(caps, hook_detail=True) -> tuple[dict[str, list[str]], list[str]]:
    """Programs to load for each point (kernel/plan.py's choice), and notes on what was passed over or
    unavailable (shown with --verbose). The netfilter positions inside a hook are loaded only with
    hook_detail (--hook-detail): each program verified costs start-up time."""
    choices = plan.choose(caps)
    plan.require(choices)
    chosen = {c.point: list(c.programs) for c in choices if c.probe and c.programs}
    if plan.hooks_by_links(choices):
        chosen["netfilter hooks"] = sorted({p for _, p, _ in _positions(caps, hook_detail=hook_detail)} |
                                           set(plan.CHAIN_PROGRAMS))
    notes = ["%s: %s" % (c.point, c.probe.label if c.probe else "unavailable") +
             "".join("; passed over %s (%s)" % t for t in c.tried) for c in choices if c.tried]
    return chosen, notes


def _positions(caps, hook_detail):
    return plan.positions(hook_detail=hook_detail, direct_read=caps.has("direct_read"))


class WatchTracer:
    """Loads and attaches the watch programs; poll() returns decoded RawEvents."""

    def __init__(self, filters, netns_paths=(None,), all_packets=False, capture=False, max_new=0,
                 hook_detail=False, caps=None):
        """max_new: follow at most this many new connections a second (0: no limit); the connections
        above it are counted (stats()[2]), not followed, so a busy port cannot flood user space. The
        decision is the kernel's, once per connection: a followed SYN's reply is followed too."""
        self.filters = list(filters)
        self.netns_paths = list(netns_paths)
        self.all_packets = all_packets
        self.capture = capture
        self.max_new = max_new
        self.caps = caps or capabilities.probe()
        self.hook_detail = hook_detail
        self.positions = _positions(self.caps, hook_detail)
        self.chosen, self.notes = choose(self.caps, hook_detail)
        # netfilter links are attached per namespace; nf_hook_slow's probes (older kernels) once, globally
        self.links = plan.hooks_by_links(plan.choose(self.caps))
        self._obj = None
        self._rb = None
        self._links: list = []
        self._brackets: dict = {}       # netns path -> (chain priorities, IPv6 too, the bracket links)
        self._chain_prios: dict = {}    # netns path -> chain priorities read before attaching
        self._recheck_at = time.monotonic() + BRACKET_RECHECK_S
        self._pending: list = []
        self._loading: Optional[threading.Thread] = None
        self._load_error: Optional[BaseException] = None
        self._load_ms = (0.0, 0)

    def aim(self, filters, netns_paths):
        """What to follow and where, when they were not known at construction (see load_early)."""
        self.filters = list(filters)
        self.netns_paths = list(netns_paths)
        return self

    def load_early(self):
        """Open and load the programs on a thread, now, while the caller finds out what to follow: libbpf
        (BTF parsing, the verifier) runs without the GIL, so it overlaps the caller's imports and look-ups
        on a second core. start() waits for it. (watch: ~80 ms off the path to 'Watching'.)"""
        def run():
            try:
                self._load()
            except BaseException as e:      # raised by start(), in the caller's thread
                self._load_error = e
        with loader.held_signals():     # the thread keeps SIGINT and SIGTERM blocked: they are the main thread's
            self._loading = threading.Thread(target=run, name="bpf-load", daemon=True)
            self._loading.start()
        return self

    def _load(self):
        t0 = time.perf_counter()
        obj = loader.BpfObject(OBJECT)
        self._obj = obj
        names = [p for progs in self.chosen.values() for p in progs]
        obj.only(*names)
        obj.set_max_entries("events", RING_CAPPED if self.max_new and not self.all_packets else RING_FULL)
        for p in (self.chosen.get("netfilter hooks", []) if self.links else []):
            obj.program(p).set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)
        obj.load()
        obj.map("watch_config").update(struct.pack("<I", 0),
                                       struct.pack("<IIII", int(self.all_packets), int(self.capture),
                                                   int(self.max_new), 1))
        self._load_ms = ((time.perf_counter() - t0) * 1000, len(names))

    def start(self):
        for note in self.notes:
            log.info("%s", note)
        try:
            t0 = time.perf_counter()
            if self._loading is not None:
                self._read_chain_priorities()
                self._join_loading()
                self._loading = None
                if self._load_error is not None:
                    raise self._load_error
                how = "on a thread during the look-ups, %.0f ms of it here" % ((time.perf_counter() - t0) * 1000)
            else:
                self._load()
                how = "here"
            t1 = time.perf_counter()
            # the filter last: a packet matched while the later points are still being attached would be
            # followed from its receive alone (a busy port's first admitted connections were all such
            # half journeys, and diagnose judged them)
            self.attach()
            for path in self.netns_paths:
                self.watch_netns(path)
            self._fill_filter(self._obj)
            self._rb = self._obj.ring_buffer("events", self._on_record)
            log.info("start-up: capabilities %s, open+load %.0f ms (%d programs; %s), attach %.0f ms (%d links)",
                     "from this boot's earlier trials" if getattr(self.caps, "cached", False)
                     else "tried in %.0f ms" % self.caps.total_ms,
                     self._load_ms[0], self._load_ms[1], how, (time.perf_counter() - t1) * 1000, len(self._links))
        except BaseException:
            self.close()
            raise
        return self

    def _read_chain_priorities(self):
        """Each namespace's chain priorities (an nft listing each, for the brackets), read while the
        programs load on their thread rather than after it."""
        from dnattrace.evidence import hooks     # nft's and iptables' readers: not on the way to the load
        self._chain_prios = {path: hooks.bracket_priorities(path) for path in self.netns_paths} if self.links else {}

    def _fill_filter(self, obj):
        """The filter map, and the port bitmap every packet is tested against first."""
        words: dict[int, int] = {}
        for f in self.filters:
            obj.map("filter").update(f.key(), b"\x01")
            words[f.port >> 6] = words.get(f.port >> 6, 0) | 1 << (f.port & 63)
        for idx, word in words.items():
            obj.map("portbits").update(struct.pack("<I", idx), struct.pack("<Q", word))

    def watch_netns(self, path):
        """Connections are decided in this namespace too (None: the current one): watched_netns, filter.h."""
        self._obj.map("watched_netns").update(struct.pack("<I", os.stat(path or "/proc/thread-self/ns/net").st_ino),
                                              b"\x01")

    def attach(self):
        """Attach the loaded programs: the tracepoints once, the netfilter links in every namespace."""
        for point, progs in self.chosen.items():
            if point == "netfilter hooks" and self.links:
                continue
            for p in progs:
                self._links.append(self._obj.program(p).attach())
                log.info("%s: %s", point, self._obj.program(p).section)
        if "netfilter hooks" in self.chosen and self.links:
            for path in self.netns_paths:
                self.attach_netns(path)

    def detach(self):
        """Close every link; the programs and maps stay loaded, and attach() puts them back. (scripts/bench
        watchtoggle compares the connection rate with and without them, seconds apart.)"""
        for link in self._links:
            link.close()
        self._links = []
        self._brackets = {}

    def attach_netns(self, path):
        """Netfilter links in one more namespace (None = the current one), the same programs for IPv4 and
        IPv6 (they read the family from the packet); nothing to do where the hooks come from nf_hook_slow
        (it sees every namespace and both families). A kernel without IPv6 (ipv6.disable=1) refuses the
        IPv6 links: IPv4 is watched alone, and -v says so."""
        if not self.links:
            return
        for hook, prog, prio in self.positions:
            self._links.append(self._attach_nf(prog, hook, prio, path, loader.NFPROTO_IPV4))
        try:
            six = [self._attach_nf(prog, hook, prio, path, loader.NFPROTO_IPV6) for hook, prog, prio in self.positions]
        except loader.BpfError as e:
            log.info("no IPv6 netfilter links in %s: %s", path or "the current namespace", e)
            six = []
        self._links += six
        log.info("netfilter links: %d positions in %s, %s", len(self.positions), path or "the current namespace",
                 "IPv4 and IPv6" if six else "IPv4 only")
        self._attach_brackets(path, bool(six))

    def _attach_brackets(self, path, six):
        """Chain brackets at the priorities of the namespace's base chains (kernel/plan.py, brackets()), and
        the priority of each in the `brackets` map, which the events report. A hook's brackets are all or
        none: where one cannot be linked (another watcher holds its priority), the others would make a
        packet's window wrong."""
        from dnattrace.evidence import hooks
        prios = self._chain_prios.pop(path) if path in self._chain_prios else hooks.bracket_priorities(path)
        self._brackets[path] = (prios, six, [])
        ino = enter.inode(path)
        by_hook: dict[tuple[int, str], list] = {}
        for b in plan.brackets(prios):
            if b.family == 4 or six:
                by_hook.setdefault((b.family, b.hook), []).append(b)
        for (family, hook), group in by_hook.items():
            links = []
            try:
                for b in group:
                    links.append(self._obj.program(b.program).attach_netfilter(
                        plan.HOOKS[hook], b.priority, pf=loader.NFPROTO_IPV6 if family == 6 else loader.NFPROTO_IPV4,
                        netns_path=path))
            except loader.BpfError as e:
                log.info("no chain brackets on %s (IPv%d) in %s: %s", hook, family, path or "this namespace", e)
                for link in links:
                    link.close()
                continue
            for b in group:
                key = struct.pack("<IBBBB", ino, plan.HOOKS[hook], b.slot, family, 0)
                self._obj.map("brackets").update(key, struct.pack("<i", b.priority))
            self._links += links
            self._brackets[path][2].extend(links)
        log.info("chain brackets: %d in %s", len(self._brackets[path][2]), path or "the current namespace")

    def chain_method(self) -> str:
        """How a journey tells which chain dropped a packet here (doctor's "rule verdict", for this watch)."""
        if not self.links:
            return "no netfilter links on this kernel: the chain comes from rule counters and evaluation, not the journey"
        n = sum(len(links) for _, _, links in self._brackets.values())
        return ("chain brackets: %d links, one below each priority where base chains run (a hook whose chains "
                "run at one priority needs none)" % n)

    def _recheck_brackets(self):
        """Bracket again a namespace whose chain priorities changed while watching (a table added or
        removed, a firewall started): every few seconds, one nft listing per namespace."""
        from dnattrace.evidence import hooks
        self._recheck_at = time.monotonic() + BRACKET_RECHECK_S
        for path, (old, six, links) in list(self._brackets.items()):
            if hooks.bracket_priorities(path) == old:
                continue
            log.info("chain priorities changed in %s: bracketing again", path or "the current namespace")
            for link in links:
                link.close()
                self._links.remove(link)
            self._attach_brackets(path, six)

    def _attach_nf(self, prog, hook, prio, path, pf):
        """The kernel allows one BPF netfilter link per (hook, priority) in a namespace: when another
        dnattrace (a watch next to a diagnose) holds it, take the next free priority inwards."""
        step = 1 if prio < 0 else -1
        for i in range(8):
            try:
                return self._obj.program(prog).attach_netfilter(plan.HOOKS[hook], prio + i * step, pf=pf,
                                                                 netns_path=path)
            except loader.BpfError as e:
                if e.errno != errno.EBUSY or i == 7:
                    raise
                log.info("%s priority %d is taken in %s, trying %d", hook, prio + i * step, path or "this namespace",
                         prio + (i + 1) * step)

    def _on_record(self, data) -> bool:
        self._pending.append(abi.decode(data))
        return len(self._pending) >= BATCH

    def poll(self, timeout_ms=100):
        """Wait up to timeout_ms, then take what is waiting, BATCH records at most. The programs wake
        this process only when a backlog builds up (see submit() in watch.bpf.c): the wait is the usual
        way out. What is left stays in the ring, where it makes the kernel admit fewer connections
        (window_open in filter.h): the reader, not the ring, sets the pace."""
        self._rb.poll(timeout_ms)
        if len(self._pending) < BATCH:
            self._rb.consume()
        out, self._pending = self._pending, []
        if self._brackets and time.monotonic() >= self._recheck_at:
            self._recheck_brackets()
        return out

    def stats(self) -> "Stats":
        """The kernel side's counts since start, over all CPUs (DT_STAT_*, watch.h)."""
        m = self._obj.map("stats")
        return Stats(*(m.counter(i) for i in range(len(Stats._fields))))

    def unfollowed_drops(self):
        """The watched flows' packets dropped while not followed (drops.DropRow per drop site)."""
        return drops.decode_rows(self._obj.map("unfollowed_drops").items())

    @property
    def started(self):
        return self._obj is not None

    def _join_loading(self):
        """Wait for the loading thread with SIGINT and SIGTERM held back (they arrive once it is done): a
        Ctrl-C that interrupted the join let close() free the object under the thread still loading it (a
        segfault when the look-ups were done before the load and Ctrl-C came during the wait)."""
        with loader.held_signals():
            self._loading.join()

    def close(self):
        if self._loading is not None:
            self._join_loading()
            self._loading = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
