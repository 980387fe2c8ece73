"""`drops --prometheus`: the drop counts as Prometheus counters, for a fleet's monitoring.

The drops loop adds each interval's described rows here (add()); a scrape renders what was added (the
HTTP server's thread only reads this module's totals under a lock, never the kernel map or the namespace
names, whose look-ups may fork). So a scrape sees the counts as of the last interval (--interval).

Cardinality is bounded: a label set (function, reason, netns, proto) becomes a series the first time it
is seen, up to MAX_SERIES; drops of any later label set are added to the one series whose labels are all
"other". A series, once made, stays (counters never go back), so the bound holds for the process's life.
"""
from __future__ import annotations

import threading

MAX_SERIES = 500
OTHER = ("other", "other", "other", "other")
LABELS = ("function", "reason", "netns", "proto")
# drops --by chain --prometheus: netfilter's drops by the chain whose counter moved (evidence/chaincount.py)
CHAIN_LABELS = ("chain", "owner", "netns")
CHAIN_OTHER = ("other", "other", "other")


class DropMetrics:
    """Totals by label set and the tool's health, rendered by collect() for prometheus_client."""

    def __init__(self, probe, max_series=MAX_SERIES):
        self.probe = probe
        self.max_series = max_series
        self.lock = threading.Lock()
        self.totals: dict = {}
        self.folded = 0              # drops counted in the "other" series
        self.overflow = 0            # drops the kernel map was too full to attribute
        self.read_errors = 0
        self.attached = 1
        self.chains: dict = {}      # CHAIN_LABELS -> count, with --by chain

    @staticmethod
    def labels(d):
        """The label set of a described row: namespace by name when known, else its inode."""
        netns = d.get("netns")
        if not netns or netns == "?" or str(netns).startswith("netns:"):
            netns = str(d.get("netns_inode") or "unknown")
        return (str(d.get("function") or d.get("location")), str(d.get("reason")), str(netns), str(d.get("proto")))

    def add(self, described, overflow):
        """One interval's described rows (counts gained) and the drops it could not attribute."""
        with self.lock:
            for d in described:
                key = self.labels(d)
                if key not in self.totals and len(self.totals) >= self.max_series:
                    key = OTHER
                    self.folded += d["count"]
                self.totals[key] = self.totals.get(key, 0) + d["count"]
            self.overflow += overflow

    def add_chains(self, rows):
        """One interval's rows by chain (the netfilter ones; the row of drops that are not netfilter's is the
        drop series' business), bounded like the drop series."""
        with self.lock:
            for r in rows:
                if r["chain"].startswith("(not netfilter"):
                    continue
                key = (r["chain"], r.get("owner") or "unknown", r.get("netns") or "unknown")
                if key not in self.chains and len(self.chains) >= self.max_series:
                    key = CHAIN_OTHER
                    self.folded += r["count"]
                self.chains[key] = self.chains.get(key, 0) + r["count"]

    def read_failed(self):
        with self.lock:
            self.read_errors += 1

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        drops = CounterMetricFamily("dnattrace_drops", "Packets the kernel dropped (kfree_skb), by drop site "
                                    "(function), drop reason, network namespace and protocol; label sets past "
                                    "the limit are added to the series whose labels are all 'other'.",
                                    labels=LABELS)
        chains = CounterMetricFamily("dnattrace_netfilter_drops", "Netfilter's drops (--by chain) by the chain "
                                     "whose counter moved, its owner and namespace; a chain of its own for what "
                                     "no counter explains.", labels=CHAIN_LABELS)
        with self.lock:
            for key, count in self.totals.items():
                drops.add_metric(list(key), count)
            for key, count in self.chains.items():
                chains.add_metric(list(key), count)
            health = [
                CounterMetricFamily("dnattrace_map_overflows", "Drops counted but not attributed: the kernel's "
                                    "drop map was full (drops keeps no event stream: these are its losses).", value=self.overflow),
                CounterMetricFamily("dnattrace_drops_folded", "Drops added to the 'other' series because the "
                                    "label-set limit was reached.", value=self.folded),
                CounterMetricFamily("dnattrace_scrape_errors", "Reads of the kernel's drop map that failed "
                                    "(the last counts are served meanwhile).", value=self.read_errors),
                GaugeMetricFamily("dnattrace_label_sets", "Distinct drop label sets exported.",
                                  value=len(self.totals)),
                GaugeMetricFamily("dnattrace_label_sets_limit", "Most label sets exported before folding "
                                  "into 'other'.", value=self.max_series),
            ]
        attached = GaugeMetricFamily("dnattrace_programs_attached", "BPF programs attached, by probe.",
                                     labels=["probe"])
        attached.add_metric([str(self.probe)], self.attached)
        yield drops
        if self.chains:
            yield chains
        yield from health
        yield attached


def serve(metrics, address, port):
    """Serve /metrics on address:port in a daemon thread; returns the port bound (port 0: a free one)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server.server_address[1]
