"""`dnattrace drops`: where and why the kernel drops packets, every interval; a dropwatch replacement.

Thin: parse and check options, run the DropCounter, render each interval as a table, JSON or
dropwatch-shaped lines, and the cumulative table at the end (also on Ctrl-C)."""
from __future__ import annotations

import time

import click

from dnattrace.commands import options as opt
from dnattrace.errors import UsageError
from dnattrace.kernel import preflight
from dnattrace.kernel.loader import BpfError
from dnattrace.output import tables
from dnattrace.output.stream import Output

COLUMNS = ("count", "rate", "location", "reason", "netns", "proto", "meaning")
CHAIN_COLUMNS = {"chain": ("count", "rate", "chain", "owner", "netns"),
                 "rule": ("count", "rate", "chain", "rule", "owner", "netns")}
MEANING_WIDTH = 60
STACK_ROWS = 3
MAX_SERIES = 500          # dnattrace.output.prometheus.MAX_SERIES (not imported: prometheus_client is lazy)


class Printer:
    """Renders one span of drops in the chosen output shape."""

    def __init__(self, describer, counter, by, top, as_json, dropwatch, stacks, out, metrics=None, chains=None):
        self.out = out
        self.chains = chains        # --by chain/rule: evidence.chaincount.ChainCounts of the namespace
        self.metrics = metrics      # --prometheus: intervals go to the exporter instead of stdout
        self.emit = out.line
        self.describer = describer
        self.counter = counter
        self.by = by
        self.top = top
        self.as_json = as_json
        self.dropwatch = dropwatch
        self.stacks = stacks

    def _describe(self, rows, seconds, kind="interval"):
        from dnattrace.drops import counter as drops
        if self.chains is not None:
            return self.chains.rows([self.describer.describe(row, seconds) for row in rows], self.by, seconds,
                                    since_start=kind == "summary")
        out = []
        for row in rows:
            d = self.describer.describe(row, seconds)
            if self.stacks and row.stack_id >= 0:
                d["stack"] = self.describer.frames(self.counter.stack(row.stack_id), row.location)
            out.append(d)
        return drops.group(out, "site" if self.dropwatch else self.by)

    def span(self, kind, rows, seconds, overflow):
        """An interval's rows, or (kind "summary") the totals, which reach the terminal even when
        stdout cannot be written."""
        self.emit = self.out.summary if kind == "summary" else self.out.line
        if self.metrics is not None and kind == "interval":
            # by site, reason, namespace and protocol whatever --by says: the exporter's labels
            described = [self.describer.describe(row) for row in rows]
            self.metrics.add(described, overflow)
            if self.chains is not None:
                self.metrics.add_chains(self.chains.rows(described, "chain", seconds))
            return
        described = self._describe(rows, seconds, kind)
        total = sum(d["count"] for d in described)
        shown = described[: self.top] if self.top else described
        if self.as_json:
            self.emit(tables.json_line({
                "type": kind, "time": round(time.time(), 3), "seconds": round(seconds, 3),
                "probe": self.counter.probe, "total": total, "overflow": overflow, "rows": shown}))
        elif self.dropwatch and self.chains is None:
            for d in shown:
                self.emit("%d drops at %s (%s) [%s]" % (d["count"], d["location"], d["address"], d["reason"]))
            if overflow:
                self.emit("%d drops not attributed (drop map full)" % overflow)
        else:
            self._table(kind, described, shown, total, seconds, overflow)

    def _table(self, kind, described, shown, total, seconds, overflow):
        stamp = time.strftime("%H:%M:%S")
        title = "since start" if kind == "summary" else "in %.1f s" % seconds
        if not described:
            self.emit("%s  no drops %s" % (stamp, title))
            return
        if self.chains is not None:
            self.emit("%s  %d drops %s, netfilter's by the %s whose counter moved" % (stamp, total, title, self.by))
            rows, columns, first = shown, CHAIN_COLUMNS[self.by], "chain"
        else:
            self.emit("%s  %d drops %s at %d sites" % (stamp, total, title, len(described)))
            rows = [dict(d, meaning=tables.shorten(d["meaning"], MEANING_WIDTH)) for d in shown]
            columns, first = COLUMNS, "location"
        totals = {"count": total, "rate": round(total / seconds, 1) if seconds else None, first: "total"}
        if len(shown) < len(described):
            totals[columns[3]] = "(%d more rows)" % (len(described) - len(shown))
        self.emit(tables.table(rows, columns, totals=totals))
        for d in shown[:STACK_ROWS]:
            if d.get("stack"):
                self.emit("  stack at %s: %s" % (d["location"], " < ".join(d["stack"])))
        if overflow:
            self.emit("warning: %d drops not attributed: the drop map is full" % overflow)
        self.emit("")


@click.command(epilog="\b\nExamples:\n  sudo dnattrace drops --interval 5 --top 10\n"
                      "  sudo dnattrace drops --prometheus 9433     # metrics on http://127.0.0.1:9433/metrics")
@click.option("--interval", type=opt.INTERVAL, default=1.0, show_default=True, help="Seconds per report.")
@click.option("--duration", type=opt.SECONDS, help="Stop after this many seconds.")
@click.option("--count", type=opt.COUNT, help="Stop after this many intervals.")
@click.option("--top", type=opt.TOP, default=20, show_default=True, help="Show the N busiest rows.")
@click.option("--by", type=click.Choice(["location", "reason", "netns", "proto", "chain", "rule"]),
              help="Group rows by one field (default: site, reason, namespace and protocol). chain/rule: "
                   "netfilter's drops by the chain (rule) whose counter moved, every table and backend of the "
                   "namespace (--netns, else the host's); what no counter explains is a row of its own.")
@click.option("--netns", "netns_name", metavar="NAME",
              help="Only drops in this namespace: host, an `ip netns` name, a container name.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp", "all"]), default="all", show_default=True)
@click.option("--port", type=opt.PORT, help="Only IPv4 TCP/UDP packets from or to this port.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval.")
@click.option("--dropwatch", is_flag=True, help="Lines shaped like `dropwatch -lkas` output.")
@click.option("--stacks", is_flag=True, help="Show a few kernel stack frames for the top sites.")
@click.option("--prometheus", "listen", type=opt.LISTEN, metavar="[ADDR:]PORT",
              help="Serve the counts as Prometheus metrics on http://ADDR:PORT/metrics (ADDR defaults to "
                   "127.0.0.1; 0.0.0.0 for every address). dnattrace_drops_total by function, reason, netns, "
                   "proto; at most %d label sets, later ones are added to one series labelled 'other'. "
                   "Intervals are not printed; the totals are at the end." % MAX_SERIES)
@click.pass_context
def drops(ctx, interval, duration, count, top, by, netns_name, proto, port, as_json, dropwatch, stacks, listen):
    """Count kernel packet drops: where (function+offset), why (drop reason), in which namespace."""
    opt.exclusive(ctx, as_json="--json", dropwatch="--dropwatch")
    if by in ("chain", "rule") and dropwatch:
        raise UsageError("--by %s cannot be combined with --dropwatch" % by)
    preflight.require_bpf_privileges()
    from dnattrace.drops import counter as engine
    from dnattrace import forked
    from dnattrace.kernel import kallsyms
    from dnattrace.netns import names as netns

    forked.stay_light()      # long-lived: Docker's names are asked in a child process (dnattrace.forked)
    ns_inode, ns_path = netns.resolve(netns_name) if netns_name else (None, None)
    namer = netns.Namer()
    symbols = kallsyms.load()
    # bound before anything is attached: an address in use is bad input that leaves the kernel alone
    metrics, url = _exporter(listen) if listen else (None, None)
    chains = None
    if by in ("chain", "rule"):
        from dnattrace.evidence import chaincount
        chains = chaincount.ChainCounts(ns_path, netns_name or "host")     # the counters before counting starts
    counter = engine.DropCounter(port=port, netns=ns_inode, proto=proto, stacks=stacks)
    with counter:
        out = Output()
        if metrics:
            metrics.probe = counter.probe
        printer = Printer(engine.Describer(namer, symbols), counter, by, top, as_json, dropwatch, stacks, out,
                          metrics, chains)
        start = last = time.monotonic()
        spans = 0
        interrupted = False
        try:
            # said inside the try: a reader may signal the moment it sees this line
            _say_started(out, counter.probe, interval, as_json, dropwatch, url)
            while True:
                wake = last + interval
                if duration is not None:
                    wake = min(wake, start + duration)
                time.sleep(max(0.0, wake - time.monotonic()))
                now = time.monotonic()
                try:
                    rows = counter.read()
                except BpfError:
                    if metrics is None:
                        raise
                    metrics.read_failed()      # an exporter keeps serving the last counts
                    rows = []
                printer.span("interval", rows, now - last, counter.overflow)
                last = now
                spans += 1
                if out.failure or (count is not None and spans >= count) or (
                        duration is not None and now - start >= duration - 1e-3):
                    break
        except KeyboardInterrupt:
            interrupted = True
        # dropwatch never printed totals at a normal end; keep its output shape unless interrupted
        if interrupted or not dropwatch:
            if dropwatch:
                out.summary("--- since start ---")
            printer.span("summary", counter.cumulative(), time.monotonic() - start, counter.overflow_total)
    out.check()


def _say_started(out, probe, interval, as_json, dropwatch, url):
    """The start line: a reading program (or test) knows from it that counting has begun."""
    if as_json:
        record = {"type": "start", "time": round(time.time(), 3), "probe": probe, "interval": interval}
        if url:
            record["prometheus"] = url
        out.line(tables.json_line(record))
    elif not dropwatch:
        out.line("Counting drops with %s%s%s; Ctrl-C for the totals." % (
            probe, " (every %g s)" % interval if interval != 1 else "",
            "; Prometheus metrics at %s" % url if url else ""))


def _exporter(listen):
    """Start serving /metrics: (DropMetrics, its URL). An address that cannot be bound is bad input."""
    from dnattrace.output import prometheus
    address, port = listen
    metrics = prometheus.DropMetrics(None, max_series=MAX_SERIES)
    try:
        bound = prometheus.serve(metrics, address, port)
    except OSError as e:
        raise UsageError("cannot serve Prometheus metrics on %s:%d: %s" % (address, port, e.strerror or e))
    host = "[%s]" % address if ":" in address else address
    return metrics, "http://%s:%d/metrics" % (host, bound)
