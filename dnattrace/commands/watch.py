"""`dnattrace watch`: follow each connection attempt (and its reply) hook by hook, live."""
from __future__ import annotations

import sys
import time

import click

from dnattrace.kernel import preflight
from dnattrace.output import tables, journey_lines
from dnattrace.errors import UsageError


def watch_options(f):
    """Options shared by watch and diagnose: what to follow."""
    f = click.option("--netns", "netns", metavar="NAME",
                     help="The host's namespace if not this one (an `ip netns` name or a path).")(f)
    f = click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)(f)
    f = click.option("--container", metavar="NAME|ID", help="Take the port, address and namespace from Docker.")(f)
    f = click.option("--port", type=int, help="The published port (what clients connect to).")(f)
    return f


@click.command()
@watch_options
@click.option("--src", metavar="CIDR", help="Only connections from these clients.")
@click.option("--dst", metavar="IP", help="Only connections to this published address.")
@click.option("--all", "all_packets", is_flag=True, help="Every packet of the flows, not only SYN/SYN-ACK/RST.")
@click.option("--duration", type=float, help="Stop after S seconds.")
@click.option("--count", type=int, help="Stop after N connection attempts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finished journey, then a summary.")
@click.option("--pcap", type=click.Path(dir_okay=False, writable=True), help="Write each point's packet to a pcapng file.")
# 20: each followed connection is two journeys of ~15 lines, so 20 a second is already more than a person
# reads, and a busy port's other connections are counted; at 100 the watch's own work (decoding and
# printing every step) cost a busy 2-core host 12% of its connection rate (scripts/bench watch, c and e).
@click.option("--max-rate", type=click.IntRange(min=0), default=20, show_default=True,
              help="Follow at most this many new connections a second (0: no limit); the rest are counted.")
@click.option("--hook-detail", is_flag=True,
              help="Also probe inside hooks (after conntrack, after DNAT, after SNAT); costs every packet more.")
@click.pass_context
def watch(ctx, port, container, proto, netns, src, dst, all_packets, duration, count, as_json, pcap, max_rate,
          hook_detail):
    """Follow each SYN (and its reply) through the kernel, hook by hook."""
    from dnattrace import forked, model
    from dnattrace.watch import resolve as targets
    from dnattrace.watch.session import Follower, resolve_with_addresses

    if port is not None:
        targets.check_port(port)
    if src:
        try:
            model.ip_in("0.0.0.0", src)
        except ValueError:
            raise UsageError("--src %s is not an address range (CIDR)" % src) from None
    if count is not None and count < 1:
        raise UsageError("--count must be at least 1")
    preflight.require_root()
    preflight.require_btf()
    # a long-lived process with a memory budget: Docker's and pyroute2's imports stay in short-lived
    # children, for the target here and for the look-ups made while watching (dnattrace.forked)
    forked.stay_light()
    t, local = forked.run_apart(resolve_with_addresses, port=port, container=container, proto=proto, netns=netns,
                               dst=dst)
    writer = None
    if pcap:
        from dnattrace.watch.pcapng import PcapngWriter
        try:
            writer = PcapngWriter(pcap)
        except OSError as e:
            raise UsageError("cannot write %s: %s" % (pcap, e.strerror)) from None
    out = click.echo
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    shown: set[int] = set()     # ids of the connections printed so far

    def wanted(c):
        return not src or model.ip_in(c.key.src, src)

    def on_journey(j, c):
        if not wanted(c):
            return
        if c.requests:
            shown.add(id(c))
        if as_json:
            out(tables.json_line(journey_lines.journey_json(j, c)))
        else:
            out(journey_lines.render_journey(j, c, t0))

    def on_drops(ds):
        if as_json:
            out(tables.json_line(journey_lines.unfollowed_drops_json(ds)))
        else:
            out(journey_lines.unfollowed_drops_text(ds, (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t0) / 1e9))

    def enough():
        return count is not None and len(shown) >= count

    f = Follower(t, all_packets=all_packets, pcap=writer, max_new=max_rate, hook_detail=hook_detail, local=local)
    try:
        with f:
            # said once the probes are attached, so a script can start its traffic on this line
            if as_json:
                out(tables.json_line({"type": "start", "target": t.describe(), "netns": t.netns_paths(),
                                      "probes": f.tracer.chosen}), nl=True)
            else:
                out("%s. Watching%s ... (Ctrl-C to stop)" % (t.describe(), " for %g s" % duration if duration else ""))
            sys.stdout.flush()
            f.run(on_journey, duration=duration, stop=enough, on_drops=on_drops, until_signal=True)
    except KeyboardInterrupt:
        pass    # Ctrl-C ends the watch: the summary below is what the user wants
    finally:
        if writer:
            writer.close()
    conns = [c for c in f.builder.all_connections() if wanted(c)]
    counts = (f.lost_events, f.not_followed, f.builder.retired_untold, f.unfollowed_drops)
    if as_json:
        out(tables.json_line(journey_lines.summary_json(conns, *counts)))
    else:
        out("\n" + journey_lines.summary_table(conns, *counts))
