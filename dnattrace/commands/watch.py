"""`dnattrace watch`: follow each connection attempt (and its reply) hook by hook, live."""
from __future__ import annotations

import logging
import time

import click

from dnattrace.commands import options as opt
from dnattrace.kernel import preflight
from dnattrace.output import tables, journey_lines
from dnattrace.output.stream import GuardedFile, Output
from dnattrace.errors import CannotObserve, CannotWrite

log = logging.getLogger("dnattrace.watch")


def watch_options(f):
    """Options shared by watch and diagnose: what to follow."""
    f = click.option("--netns", "netns", metavar="NAME",
                     help="The host's namespace if not this one (an `ip netns` name or a path).")(f)
    f = click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)(f)
    f = click.option("--container", metavar="NAME|ID", help="Take the port, address and namespace from Docker.")(f)
    f = click.option("--port", type=opt.PORT, help="The published port (what clients connect to).")(f)
    return f


@click.command(epilog="\b\nExample:\n  sudo dnattrace watch --port 8080 --count 5      # five connection attempts to :8080, hook by hook")
@watch_options
@click.option("--src", type=opt.CIDR, metavar="CIDR", help="Only connections from these clients.")
@click.option("--dst", type=opt.ADDRESS, metavar="IP", help="Only connections to this published address.")
@click.option("--all", "all_packets", is_flag=True, help="Every packet of the flows, not only SYN/SYN-ACK/RST.")
@click.option("--duration", type=opt.SECONDS, help="Stop after S seconds.")
@click.option("--count", type=opt.COUNT, help="Stop after N connection attempts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finished journey, then a summary.")
@click.option("--pcap", type=click.Path(), help="Write each point's packet to a pcapng file.")
# 20: each followed connection is two journeys of ~15 lines, so 20 a second is already more than a person
# reads, and a busy port's other connections are counted; at 100 the watch's own work (decoding and
# printing every step) cost a busy 2-core host 12% of its connection rate (scripts/bench watch, c and e).
@click.option("--max-rate", type=opt.RATE, default=20, show_default=True,
              help="Follow at most this many new connections a second (0: no limit); the rest are counted.")
@click.option("--hook-detail", is_flag=True,
              help="Also probe inside hooks (after conntrack, after DNAT, after SNAT); costs every packet more.")
@click.pass_context
def watch(ctx, port, container, proto, netns, src, dst, all_packets, duration, count, as_json, pcap, max_rate,
          hook_detail):
    """Follow each SYN (and its reply) through the kernel, hook by hook."""
    from dnattrace import forked

    log.info("start-up: the watch command begins %.0f ms after exec (Python, imports, options)", _since_exec_ms())
    preflight.require_root()
    preflight.require_btf()
    # a long-lived process with a memory budget: Docker's and pyroute2's imports stay in short-lived
    # children, for the target here and for the look-ups made while watching (dnattrace.forked)
    forked.stay_light()
    from dnattrace.watch.tracer import WatchTracer
    # the programs load on a thread while the target is looked up (WatchTracer.load_early)
    tracer = WatchTracer([], all_packets=all_packets, capture=bool(pcap), max_new=max_rate,
                         hook_detail=hook_detail).load_early()
    log.info("start-up: the programs load on a thread from %.0f ms after exec", _since_exec_ms())
    try:
        f, printer, out, writer, presence = _prepare(tracer, port, container, proto, netns, src, dst, all_packets,
                                                     as_json, pcap, max_rate, hook_detail)
    except BaseException:
        tracer.close()
        raise

    def stop():
        return (count is not None and printer.shown >= count) or out.failure is not None or presence.nothing_left()
    try:
        with f:
            log.info("start-up: every probe attached %.0f ms after exec", _since_exec_ms())
            printer.started(f.target, f.tracer.chosen, duration,   # a script can start its traffic on this line
                            f.tracer.chain_method() if hook_detail or as_json else "")
            f.run(printer.journey, duration=duration, stop=stop, on_drops=printer.drops, until_signal=True)
    except KeyboardInterrupt:
        pass    # Ctrl-C ends the watch: the summary below is what the user wants
    finally:
        if writer:
            writer.close()
    printer.summary(f)
    out.check()
    presence.check()


def _prepare(tracer, port, container, proto, netns, src, dst, all_packets, as_json, pcap, max_rate, hook_detail):
    """The target looked up, and the follower, printer and checks of a watch."""
    from dnattrace import forked
    from dnattrace.watch.session import Follower
    from dnattrace.watch.resolve import resolve_with_addresses
    t0 = time.perf_counter()
    # Without --container the look-up needs no Docker SDK (the engine's socket, iptables-save and netlink
    # only), so it runs here, ~0.2 s sooner than in a child; --container imports the SDK in a child
    apart = container is not None
    t, local = (forked.run_apart if apart else _here)(resolve_with_addresses, port=port, container=container,
                                                     proto=proto, netns=netns, dst=dst)
    log.info("start-up: target and addresses looked up in %.0f ms (%s)", (time.perf_counter() - t0) * 1000,
             "in a look-up child" if apart else "in this process")
    out = Output()
    writer = GuardedFile(_pcap_writer(pcap), pcap, out) if pcap else None
    printer = _Printer(as_json, src, out)
    presence = _Presence(t.netns_paths())
    f = Follower(t, all_packets=all_packets, pcap=writer, max_new=max_rate, hook_detail=hook_detail, local=local,
                 bounded=True, tracer=tracer)
    return f, printer, out, writer, presence


def _here(fn, **kw):
    return fn(**kw)


def _since_exec_ms() -> float:
    """Milliseconds since this process was exec'd (its start time in /proc is in 10 ms steps)."""
    import os
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19])
    return (time.clock_gettime(time.CLOCK_BOOTTIME) - started / os.sysconf("SC_CLK_TCK")) * 1000


class _Presence:
    """Namespaces removed under a running watch (a lab torn down): said once each; when none of those
    watched is left the watch ends (exit 3: there is nothing left to observe)."""

    def __init__(self, paths):
        from dnattrace.netns.enter import Presence
        self.p = Presence(paths)
        self._checked = 0.0

    def nothing_left(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= 0.5:      # a stat per namespace, twice a second
            self._checked = now
            for path in self.p.check():
                if not self.p.nothing_left:
                    click.echo("dnattrace: network namespace %s is gone; still watching the others" % path, err=True)
        return self.p.nothing_left

    def check(self):
        if self.p.nothing_left:
            raise CannotObserve("nothing left to watch: the network namespaces watched are gone (%s)"
                                % ", ".join(self.p.gone))


def _pcap_writer(pcap):
    if not pcap:
        return None
    from dnattrace.watch.pcapng import PcapngWriter
    try:
        return PcapngWriter(pcap)
    except OSError as e:     # a directory, a read-only file system, no room: cannot write (exit 3)
        raise CannotWrite("cannot write %s: %s" % (pcap, e.strerror)) from None


class _Printer:
    """What watch prints: each journey of the connections asked for, the drops of packets not followed,
    and the summary; as text or JSON lines."""

    def __init__(self, as_json, src, out):
        self.out = out
        self.as_json = as_json
        self.src = src
        self.t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self._shown: set[int] = set()     # ids of the connections printed so far

    @property
    def shown(self) -> int:
        return len(self._shown)

    def wanted(self, c) -> bool:
        from dnattrace import model
        return not self.src or model.ip_in(c.key.src, self.src)

    def started(self, t, probes, duration, chains=""):
        """chains: how the chain that dropped a packet is told (with --hook-detail, and in JSON)."""
        if self.as_json:
            self.out.line(tables.json_line({"type": "start", "target": t.describe(), "netns": t.netns_paths(),
                                         "probes": probes, "chains": chains}))
        else:
            self.out.line("%s. Watching%s ... (Ctrl-C to stop)" % (t.describe(), " for %g s" % duration if duration else ""))
            if chains:
                self.out.line("netfilter chains: " + chains)

    def journey(self, j, c):
        if not self.wanted(c):
            return
        if c.requests:
            self._shown.add(id(c))
        if self.as_json:
            self.out.line(tables.json_line(journey_lines.journey_json(j, c)))
        else:
            self.out.line(journey_lines.render_journey(j, c, self.t0))

    def drops(self, ds):
        if self.as_json:
            self.out.line(tables.json_line(journey_lines.unfollowed_drops_json(ds)))
        else:
            self.out.line(journey_lines.unfollowed_drops_text(ds, (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - self.t0) / 1e9))

    def summary(self, f):
        conns = [c for c in f.builder.all_connections() if self.wanted(c)]
        counts = (f.lost_events, f.not_followed, f.builder.untold_outcomes, f.unfollowed_drops)
        if self.as_json:
            self.out.summary(tables.json_line(journey_lines.summary_json(conns, *counts, acct=f.accounting())))
        else:
            self.out.summary("\n" + journey_lines.summary_table(conns, *counts, acct=f.accounting()))
