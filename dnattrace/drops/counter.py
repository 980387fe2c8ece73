"""The drop counter behind `dnattrace drops` (and watch's count of drops it does not follow): load bpf/drops/drops.bpf.c,
attach it to kfree_skb, and read per-interval drop counts keyed by site, reason, namespace and protocol.

Why cumulative counts and differences: the kernel adds to per-CPU counters that are never deleted while
running, and each read() subtracts the previous read. Deleting keys after reading would lose the drops
counted between the read and the delete; differences lose nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections import Counter

from dnattrace.kernel import btf, kallsyms, objects, reasons
from dnattrace.errors import CannotObserve
from dnattrace.kernel.loader import BpfError, BpfObject

log = logging.getLogger("dnattrace.drops.counter")

# The layouts and flags of bpf/drops/drops.h (tests/test_drops_layout.py compiles it and checks these):
FLAG_PORT, FLAG_STACKS, FLAG_NETNS = 1, 2, 4
_KEY = struct.Struct("<QIIiHHB7x")       # struct drop_key (bpf/common/drop_key.h), the drops map's key
_CONFIG = struct.Struct("<IHBB")         # struct drops_config
STAT_OVERFLOW, STAT_COUNTED = 0, 1       # DROPS_STAT_*: drops_stats slots
_U64 = struct.Struct("<Q")
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}
_L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 2: "igmp", 58: "icmpv6", 132: "sctp"}
_L3_NAMES = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp"}
STACK_FRAMES = 5


@dataclasses.dataclass
class DropRow:
    """Drops at one site, for one reason, in one namespace, of one protocol (and port, stack) in a span."""

    location: int
    reason: int
    netns: int
    l3proto: int
    l4proto: int
    port: int
    stack_id: int
    count: int

    @property
    def key(self):
        return (self.location, self.reason, self.netns, self.l3proto, self.l4proto, self.port, self.stack_id)


def proto_name(l3proto, l4proto):
    """'tcp', 'udp', ... for IPv4 payloads, 'tcp6', 'udp6', 'icmpv6' for IPv6 ones (as netstat names
    them: the family shows, and --proto tcp counts both); else the L3 name ('ipv6', 'arp') or the hex
    ethertype."""
    if l3proto == 0x0800 and l4proto:
        return _L4_NAMES.get(l4proto, "ip/%d" % l4proto)
    if l3proto == 0x86DD and l4proto:
        name = _L4_NAMES.get(l4proto, "ip6/%d" % l4proto)
        return name if name.endswith("6") else name + "6"
    return _L3_NAMES.get(l3proto, "%#06x" % l3proto if l3proto else "-")


def decode_rows(items):
    """DropRows from (key bytes, per-CPU value list) pairs as the map returns them: counts summed over CPUs."""
    rows = []
    for kbytes, per_cpu in items:
        location, reason, netns, stack_id, l3, port, l4 = _KEY.unpack(kbytes)
        total = sum(_U64.unpack_from(v)[0] for v in per_cpu)
        rows.append(DropRow(location, reason, netns, l3, l4, port, stack_id, total))
    return rows


def deltas(previous, current):
    """Rows with what each key gained since `previous` ({key: count}); returns (rows, new snapshot)."""
    out = []
    snap = {}
    for row in current:
        snap[row.key] = row.count
        gained = row.count - previous.get(row.key, 0)
        if gained > 0:
            out.append(dataclasses.replace(row, count=gained))
    return out, snap


def object_path():
    return objects.path("drops")


class DropCounter:
    """Counts kernel packet drops in a kernel map. Use as a context manager:

        with DropCounter(port=8080) as dc:
            ...
            rows = dc.read()      # DropRows gained since the previous read (or since attach)

    netns: a namespace inode to count only there; proto: 'tcp'|'udp'|'icmp' or None; port: count only
    IPv4 TCP/UDP packets from or to it; stacks: record kernel stack ids (see stack()).
    """

    def __init__(self, port=None, netns=None, proto=None, stacks=False, prefer_btf=True):
        self.port = port
        self.netns = netns
        self.proto = PROTOCOLS[proto] if proto and proto != "all" else 0
        self.stacks = stacks
        self.prefer_btf = prefer_btf
        self.probe = None            # "tp_btf/kfree_skb" or "tracepoint/skb/kfree_skb" once attached
        self._obj = None
        self._snapshot: dict = {}
        self._overflow_seen = 0
        self.overflow = 0            # drops the full map could not hold, in the last read()
        self.overflow_total = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def _config_bytes(self):
        flags = ((FLAG_PORT if self.port else 0) | (FLAG_STACKS if self.stacks else 0)
                 | (FLAG_NETNS if self.netns else 0))
        return _CONFIG.pack(self.netns or 0, self.port or 0, self.proto, flags)

    def _open(self, prog):
        obj = BpfObject(object_path()).only(prog)
        try:
            if not self.stacks:
                obj.set_max_entries("stacks", 1)
            obj.load()
            obj.map("drops_cfg").update(b"\0" * 4, self._config_bytes())
            if prog == "drops_tp":
                from dnattrace.kernel import tracefs
                tracefs.ensure()
            obj.program(prog).attach()
        except BaseException:
            obj.close()
            raise
        return obj

    def open(self):
        if not _may_trace():
            raise CannotObserve("counting drops needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): "
                                "run it with sudo")
        choices = [("drops_btf", "tp_btf/kfree_skb"), ("drops_tp", "tracepoint/skb/kfree_skb")]
        if not self.prefer_btf:
            choices = choices[1:]
        errors = []
        for prog, probe in choices:
            try:
                self._obj = self._open(prog)
            except BpfError as e:
                log.info("%s refused (%s); trying the next probe", probe, str(e).splitlines()[0])
                errors.append("%s: %s" % (probe, str(e).splitlines()[0]))
                continue
            self.probe = probe
            log.info("counting drops with %s", probe)
            return self
        raise CannotObserve("cannot attach to kfree_skb: " + "; ".join(errors))

    def close(self):
        if self._obj:
            self._obj.close()
            self._obj = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # -- reading --------------------------------------------------------------------------------------
    def cumulative(self):
        """Every key with its count since attach."""
        return decode_rows(self._obj.map("drops").items())

    def _stats(self):
        stats = self._obj.map("drops_stats")
        return [stats.counter(STAT_OVERFLOW), stats.counter(STAT_COUNTED)]

    def read(self):
        """DropRows gained since the previous read(); also updates .overflow (drops not stored)."""
        rows, self._snapshot = deltas(self._snapshot, self.cumulative())
        overflow_total, _counted = self._stats()
        self.overflow = overflow_total - self._overflow_seen
        self._overflow_seen = self.overflow_total = overflow_total
        return rows

    def counted(self):
        """All drops the kernel side counted since attach (stored or overflowed)."""
        return self._stats()[1]

    def stack(self, stack_id):
        """Raw return addresses of a recorded kernel stack (innermost first), [] if unknown."""
        if stack_id < 0 or not self._obj:
            return []
        raw = self._obj.map("stacks").lookup(struct.pack("<I", stack_id))
        if raw is None:
            return []
        addrs = struct.unpack("<%dQ" % (len(raw) // 8), raw)
        return [a for a in addrs if a]


class Describer:
    """Turns DropRows into plain dicts with names: site, reason name, meaning, namespace name, protocol."""

    def __init__(self, namer, symbols=None, reason_names=None):
        self.namer = namer
        self.symbols = symbols or kallsyms.load()
        self.reason_names = reason_names if reason_names is not None else _reason_names()

    def reason(self, code):
        return self.reason_names.get(code, "reason %d" % code)

    def describe(self, row, seconds=None):
        function = self.symbols.function(row.location)
        inferred = not self.reason_names      # the kernel has no drop reasons: by the site, or unknown
        name = reasons.BY_SITE.get(kallsyms.base_name(function), reasons.UNKNOWN) if inferred \
            else self.reason(row.reason)
        d = {
            "count": row.count,
            "rate": round(row.count / seconds, 1) if seconds else None,
            "location": self.symbols.format(row.location),
            "address": "%#x" % row.location,
            "function": function,
            "reason": name,
            "reason_code": row.reason,
            "reason_inferred": inferred,
            "netns": self.namer.name(row.netns),
            "netns_inode": row.netns,
            "proto": proto_name(row.l3proto, row.l4proto),
            "meaning": ("this kernel reports no drop reasons (5.17+), and this site has several"
                        if name == reasons.UNKNOWN else
                        ("inferred from the site: " if inferred else "") + reasons.meaning(name)),
        }
        if row.port:
            d["port"] = row.port
        return d

    def frames(self, addrs, location=None):
        """A few symbolized frames, starting at the drop site's function when it is on the stack."""
        names = [self.symbols.format(a) for a in addrs]
        if location is not None:
            site = self.symbols.function(location)
            for i, n in enumerate(names):
                if n.split("+")[0] == site:
                    names = names[i:]
                    break
        return names[:STACK_FRAMES]


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def _may_trace():
    """Whether this process holds the capabilities to load and attach tracing programs."""
    try:
        with open("/proc/self/status") as f:
            eff = next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return os.geteuid() == 0
    has = lambda cap: bool(eff >> cap & 1)   # noqa: E731
    return has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON))


def _reason_names():
    try:
        return btf.drop_reasons()
    except btf.BtfError as e:
        log.info("no reason names: %s", e)
        return {}


GROUPINGS = {
    None: ("location", "reason", "netns", "proto", "port"),
    "site": ("location", "reason"),       # dropwatch lines
    "location": ("location",),
    "reason": ("reason",),
    "netns": ("netns",),
    "proto": ("proto",),
}
MIXED = "*"


def group(described, by=None):
    """Merge described rows on the fields of grouping `by`; other fields keep their value when all merged
    rows agree, else MIXED. Busiest first."""
    fields = GROUPINGS[by]
    merged: dict = {}
    for d in described:
        k = tuple(d.get(f) for f in fields)
        if k not in merged:
            merged[k] = dict(d)
            merged[k]["_biggest"] = d["count"]
            continue
        m = merged[k]
        for name, value in d.items():
            if name in ("count", "rate", "stack"):
                continue
            if m.get(name) != value:
                m[name] = MIXED
        if d.get("stack") and d["count"] > m["_biggest"]:
            m["stack"] = d["stack"]
            m["_biggest"] = d["count"]
        m["count"] += d["count"]
        if d.get("rate") is not None and m.get("rate") is not None:
            m["rate"] = round(m["rate"] + d["rate"], 1)
    out = []
    for m in merged.values():
        m.pop("_biggest", None)
        if m.get("reason") == MIXED:
            m["meaning"] = MIXED
        out.append(m)
    out.sort(key=lambda d: (-d["count"], str(d.get("location"))))
    return out


def totals(rows):
    return sum(r["count"] for r in rows)


def by_function(described):
    """{(function, reason): count}: what the tests ask ("how many at ip_error, IP_INADDRERRORS")."""
    c = Counter()
    for d in described:
        c[(d["function"], d["reason"])] += d["count"]
    return c


class Tally:
    """Drop rows read again and again (watch's drops of packets it does not follow): what each site
    gained since the last look, and all of them, described and busiest first."""

    def __init__(self, describer: Describer):
        self.describer = describer
        self._seen: dict = {}       # drop site key -> count already reported

    def gained(self, rows) -> list[dict]:
        new, self._seen = deltas(self._seen, rows)
        return self.described(new)

    def described(self, rows) -> list[dict]:
        return [self.describer.describe(r) for r in sorted(rows, key=lambda r: -r.count)]
