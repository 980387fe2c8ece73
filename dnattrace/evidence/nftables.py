"""The whole nft ruleset of a namespace, every family (ip, ip6, inet, bridge, netdev, arp), read from
`nft -j list ruleset` (structure, counters, sets) and `nft -a list ruleset` (each rule as nft prints it,
with its handle: what a user greps for and what `nft delete rule ... handle N` needs).

iptables-nft keeps its tables here too (`ip filter`, `ip6 nat`, ...): they are marked with backend
"iptables-nft", so their rules can be named in iptables' own words from `iptables-save` instead.
The raw JSON items are what is stored (to_dict/from_dict), so recorded snapshots keep every detail and
the parsed view below can grow without breaking them.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from dnattrace.evidence import owners
from dnattrace.netns.enter import inode, run_tool

VERDICTS = ("accept", "drop", "reject", "queue")
JUMPS = ("jump", "goto")
XT_TABLES = ("filter", "nat", "mangle", "raw", "security")     # the tables iptables-nft creates
_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_DEVICE = re.compile(r'devices = \{\s*([^}]+)\}|device ("[^"]+"|\S+)')
_BLOCK = re.compile(r"^(table|chain|set|map|flowtable|ct \w+|counter|quota|limit|secmark|synproxy)\s+(.*?)\s*\{"
                    r"(?:\s*# handle \d+)?$")


@dataclass
class NftRule:
    family: str
    table: str
    chain: str
    handle: int
    expr: list
    comment: str = ""
    text: str = ""                  # nft -a form ("ip saddr 198.51.100.2 counter drop # handle 7"), "" if unread

    @property
    def packets(self) -> Optional[int]:
        """The rule's counter, None when it has no counter statement."""
        for e in self.expr:
            if isinstance(e, dict) and isinstance(e.get("counter"), dict):
                return e["counter"].get("packets", 0)
        return None

    @property
    def verdict(self) -> str:
        """accept | drop | reject | queue | jump | goto | return | continue (no verdict: the next rule)."""
        for e in self.expr:
            if isinstance(e, dict):
                for k in VERDICTS + JUMPS + ("return",):
                    if k in e:
                        return k
        return "continue"

    @property
    def target(self) -> str:
        """The chain a jump or goto names."""
        for e in self.expr:
            for k in JUMPS:
                if isinstance(e, dict) and isinstance(e.get(k), dict):
                    return e[k].get("target", "")
        return ""

    def shown(self) -> str:
        return self.text or "%s # handle %d" % (" ".join(sorted({k for e in self.expr if isinstance(e, dict)
                                                                  for k in e})), self.handle)


@dataclass
class NftChain:
    family: str
    table: str
    name: str
    hook: str = ""                  # "" for a regular (user) chain
    prio: int = 0
    policy: str = "accept"
    type: str = "filter"
    device: str = ""
    rules: list[NftRule] = field(default_factory=list)

    @property
    def base(self) -> bool:
        return bool(self.hook)


@dataclass
class NftTable:
    family: str
    name: str
    backend: str = "nft"            # nft | iptables-nft (a table iptables-nft made)
    owner: str = "unknown"
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, dict] = field(default_factory=dict)     # name -> the set's JSON (type, flags, elem)


@dataclass
class NftRuleset:
    items: list = field(default_factory=list)       # `nft -j list ruleset`'s "nftables" array
    texts: dict[str, str] = field(default_factory=dict)     # "family table chain handle" -> nft -a line
    native_tables: list[str] = field(default_factory=list)  # "family name" declared by /etc/nftables.conf

    @functools.cached_property
    def tables(self) -> dict[tuple[str, str], NftTable]:
        return _build(self)

    def table(self, family: str, name: str) -> Optional[NftTable]:
        return self.tables.get((family, name))

    def chain(self, family: str, table: str, name: str) -> Optional[NftChain]:
        t = self.table(family, table)
        return t.chains.get(name) if t else None

    def base_chains(self) -> list[NftChain]:
        return [c for t in self.tables.values() for c in t.chains.values() if c.base]

    def rules(self):
        for t in self.tables.values():
            for c in t.chains.values():
                yield from c.rules

    def to_dict(self):
        return {"items": self.items, "texts": self.texts, "native_tables": self.native_tables}

    @classmethod
    def from_dict(cls, d):
        return cls(list(d.get("items", [])), dict(d.get("texts", {})), list(d.get("native_tables", [])))


def text_key(family, table, chain, handle) -> str:
    return "%s %s %s %s" % (family, table, chain, handle)


def _xt_managed(items: list) -> set[tuple[str, str]]:
    """Tables iptables-nft made: an iptables table name in the ip/ip6/arp/bridge family whose base chains
    carry iptables' upper-case names (nft's own warning, "managed by iptables-nft", is not in the JSON)."""
    out = set()
    for it in items:
        c = it.get("chain")
        if c and c.get("hook") and c.get("family") in ("ip", "ip6", "arp", "bridge") and \
                c.get("table") in XT_TABLES + ("broute",) and c.get("name", "").isupper():
            out.add((c["family"], c["table"]))
    return out


def _build(rs: NftRuleset) -> dict[tuple[str, str], NftTable]:
    tables: dict[tuple[str, str], NftTable] = {}
    xt = _xt_managed(rs.items)

    def table(fam, name):
        t = tables.get((fam, name))
        if t is None:
            t = tables[(fam, name)] = NftTable(fam, name, "iptables-nft" if (fam, name) in xt else "nft")
        return t
    for it in rs.items:
        if "table" in it:
            table(it["table"]["family"], it["table"]["name"])
        elif "set" in it or "map" in it:
            s = it.get("set") or it.get("map")
            table(s["family"], s["table"]).sets[s["name"]] = s
        elif "chain" in it:
            c = it["chain"]
            dev = c.get("dev") or c.get("device") or rs.texts.get(text_key(c["family"], c["table"], c["name"],
                                                                          "device"), "")
            table(c["family"], c["table"]).chains[c["name"]] = NftChain(
                c["family"], c["table"], c["name"], c.get("hook", ""), int(c.get("prio", 0) or 0),
                (c.get("policy") or "accept"), c.get("type", "filter"), dev if isinstance(dev, str) else ",".join(dev))
        elif "rule" in it:
            r = it["rule"]
            t = table(r["family"], r["table"])
            chain = t.chains.setdefault(r["chain"], NftChain(r["family"], r["table"], r["chain"]))
            chain.rules.append(NftRule(r["family"], r["table"], r["chain"], int(r.get("handle", 0)),
                                       r.get("expr", []), r.get("comment", ""),
                                       rs.texts.get(text_key(r["family"], r["table"], r["chain"], r.get("handle")), "")))
    for t in tables.values():
        t.owner = owners.of_table(t, "%s %s" % (t.family, t.name) in rs.native_tables)
    return tables


def parse_text(text: str) -> dict[str, str]:
    """Rule lines of `nft -a list ruleset`, keyed by family, table, chain and handle; counters' figures are
    cut ("counter"), so the text stays the same from one reading to the next."""
    out, stack = {}, []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        m = _BLOCK.match(line)
        if m:
            stack.append((m.group(1), m.group(2).split()))
            continue
        dev = _DEVICE.search(line) if line.startswith("type ") and len(stack) == 2 else None
        if dev and stack[0][0] == "table" and len(stack[0][1]) >= 2:
            out[text_key(stack[0][1][0], stack[0][1][1], stack[1][1][0], "device")] = ",".join(
                re.findall(r'"?([\w.@*-]+)"?', dev.group(1) or dev.group(2)))
            continue
        h = _HANDLE.search(line)
        if h and len(stack) == 2 and stack[0][0] == "table" and stack[1][0] == "chain" and len(stack[0][1]) >= 2:
            fam, tab = stack[0][1][0], stack[0][1][1]
            body = _COUNTER.sub("counter", line[:h.start()]).replace("  ", " ").strip()
            out[text_key(fam, tab, stack[1][1][0], h.group(1))] = "%s # handle %s" % (body, h.group(1))
            continue
        # a brace that opens or closes on a line of its own kind (a set's `elements = {` spread over
        # lines): kept in step, or the set's closing brace would close its table
        opened = line.count("{") - line.count("}")
        for _ in range(opened):
            stack.append(("{", []))
        for _ in range(-opened):
            if stack:
                stack.pop()
    return out


def parse(json_text: str, text: str = "", native_tables=()) -> NftRuleset:
    items = json.loads(json_text or "{}").get("nftables", [])
    return NftRuleset([i for i in items if "metainfo" not in i], parse_text(text), list(native_tables))


def read(netns=None, with_text=True) -> NftRuleset:
    """The namespace's nft ruleset. with_text=False: counters only (the reading after a capture).
    nftables.service loads /etc/nftables.conf into the initial namespace only: its tables are recognized
    there, not in a container's or a lab's namespace."""
    j = run_tool(["nft", "-j", "list", "ruleset"], netns)
    t = run_tool(["nft", "-a", "list", "ruleset"], netns) if with_text else ""
    return parse(j, t, owners.native_tables() if with_text and _initial(netns) else ())


def _initial(netns) -> bool:
    """Whether `netns` is the initial namespace (PID 1's; where that cannot be read, the caller's own)."""
    try:
        return inode(netns) == inode("/proc/1/ns/net")
    except OSError:
        return netns is None


@dataclass
class NftMove:
    """An nft rule whose counter moved during the capture."""
    rule: NftRule
    packets: int
    owner: str = "unknown"
    backend: str = "nft"


def counter_delta(before: NftRuleset, after: NftRuleset) -> list[NftMove]:
    """nft rules (every table, every family) whose counters went up between two readings, matched by
    family, table, chain and handle (handles are never reused within a table's life)."""
    old = {(r.family, r.table, r.chain, r.handle): r for r in before.rules()}
    out = []
    for r in after.rules():
        b = old.get((r.family, r.table, r.chain, r.handle))
        if r.packets is not None and b is not None and b.packets is not None and r.packets > b.packets:
            # whichever reading has the rules' text (diagnose reads counters only before, everything after)
            rule, t = (b, before.table(r.family, r.table)) if b.text else (r, after.table(r.family, r.table))
            out.append(NftMove(rule, r.packets - b.packets, t.owner if t else "unknown", t.backend if t else "nft"))
    out.sort(key=lambda m: -m.packets)
    return out
