"""Firewall rules and their packet counters, read from `iptables-save -c`, `ip6tables-save -c` (IPv6 has its
own tables and counters: a ruleset says its family) and `nft -j list ruleset`.

Counters are what name the rule that dropped a packet: with the nft backend every DROP frees the packet
in nft_do_chain, so the kernel's drop location cannot tell a FORWARD policy from a DOCKER-USER rule; the
counter that moved during the capture can. Remember that nat rules are evaluated only for the first packet
of a connection: a nat counter that did not move says nothing about retransmissions.
"""
from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from dnattrace.errors import DnattraceError
from dnattrace.netns.enter import command_prefix, run_tool

DROP_TARGETS = ("DROP", "REJECT")
IP_FAMILIES = ("ip", "ip6", "inet")     # the nft families that see IP packets (inet: both)
_COUNTED = re.compile(r"^\[(\d+):(\d+)\]\s+(.*)$")


@dataclass
class Rule:
    table: str
    chain: str
    text: str               # as iptables-save prints it, without counters: "-A FORWARD -j DROP"
    packets: int = 0
    bytes: int = 0

    @property
    def target(self) -> str:
        """What -j (or -g) names: ACCEPT, DROP, DNAT, a user chain, ..."""
        m = re.search(r"\s-[jg]\s+(\S+)", " " + self.text)
        return m.group(1) if m else ""

    def option(self, name: str) -> Optional[str]:
        """The value after an option, e.g. option("--dport") -> "8080"."""
        words = shlex.split(self.text)
        for i, w in enumerate(words[:-1]):
            if w == name:
                return words[i + 1]
        return None


@dataclass
class Chain:
    name: str
    policy: str = "-"       # ACCEPT/DROP for built-in chains, "-" for user chains
    packets: int = 0        # policy counters (built-in chains only)
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Ruleset:
    tables: dict[str, dict[str, Chain]] = field(default_factory=dict)
    source: str = "iptables-save"
    family: int = 4                 # 6: ip6tables' tables
    backend: str = "iptables-nft"   # iptables-nft | iptables-legacy: which kernel tables these are

    @property
    def tool(self) -> str:
        """The command that edits these rules (iptables-legacy's own when they are legacy tables beside
        an nft-backed `iptables`)."""
        base = "ip6tables" if self.family == 6 else "iptables"
        return base + "-legacy" if self.backend == "iptables-legacy" and default_backend() != self.backend else base

    def chain(self, table: str, chain: str) -> Optional[Chain]:
        return self.tables.get(table, {}).get(chain)

    def reachable(self, table: str, chain: str) -> set[str]:
        """Chains that packets entering `chain` can visit (following jumps and gotos)."""
        seen, todo = set(), [chain]
        while todo:
            c = todo.pop()
            if c in seen or self.chain(table, c) is None:
                continue
            seen.add(c)
            todo += [r.target for r in self.chain(table, c).rules if r.target]
        return seen

    def to_dict(self):
        return {"source": self.source, "family": self.family, "backend": self.backend, "tables": {
            t: {c.name: {"policy": c.policy, "packets": c.packets, "bytes": c.bytes,
                         "rules": [{"text": r.text, "packets": r.packets, "bytes": r.bytes} for r in c.rules]}
                for c in chains.values()} for t, chains in self.tables.items()}}

    @classmethod
    def from_dict(cls, d):
        rs = cls(source=d.get("source", "iptables-save"), family=d.get("family", 4),
                 backend=d.get("backend", "iptables-nft"))
        for t, chains in d.get("tables", {}).items():
            rs.tables[t] = {}
            for name, c in chains.items():
                rs.tables[t][name] = Chain(name, c.get("policy", "-"), c.get("packets", 0), c.get("bytes", 0),
                                           [Rule(t, name, r["text"], r.get("packets", 0), r.get("bytes", 0))
                                            for r in c.get("rules", [])])
        return rs


@dataclass
class CounterMove:
    """A rule or chain policy whose counters moved between two readings."""
    table: str
    chain: str
    rule: str               # rule text, or "policy DROP" for a chain policy
    packets: int
    bytes: int
    target: str             # DROP, ACCEPT, DNAT, ... (the policy for a policy move)
    policy: bool = False
    family: int = 4         # 6: an ip6tables rule
    backend: str = "iptables-nft"   # iptables-legacy: a legacy table's rule

    def __str__(self):
        return "%s%s%s %s: %s (%d packets)" % ("legacy " if self.backend == "iptables-legacy" else "",
                                               "ip6tables " if self.family == 6 else "", self.table, self.chain,
                                               self.rule, self.packets)


def parse_iptables_save(text: str, family: int = 4) -> Ruleset:
    """Parse `iptables-save -c` output (family 6: `ip6tables-save -c`, the same format)."""
    rs, table = Ruleset(source="ip6tables-save" if family == 6 else "iptables-save", family=family), None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            rs.tables.setdefault(table, {})
        elif line.startswith(":") and table:
            m = re.match(r"^:(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?", line)
            if m:
                rs.tables[table][m.group(1)] = Chain(m.group(1), m.group(2), int(m.group(3) or 0),
                                                     int(m.group(4) or 0))
        elif table:
            pk = by = 0
            m = _COUNTED.match(line)
            if m:
                pk, by, line = int(m.group(1)), int(m.group(2)), m.group(3)
            words = line.split()
            if len(words) >= 2 and words[0] == "-A":
                chain = rs.tables[table].setdefault(words[1], Chain(words[1]))
                chain.rules.append(Rule(table, words[1], line, pk, by))
    return rs


@functools.lru_cache(maxsize=1)
def default_backend() -> str:
    """Which kernel tables plain `iptables` edits on this host: iptables-nft or iptables-legacy
    (`iptables-save -V` says "(nf_tables)" or "(legacy)")."""
    try:
        out = subprocess.run(["iptables-save", "-V"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "iptables-nft"
    return "iptables-legacy" if "legacy" in out else "iptables-nft"


def read_iptables(netns=None) -> Ruleset:
    """The namespace's iptables rules with counters (iptables-save -c)."""
    rs = parse_iptables_save(run_tool(["iptables-save", "-c"], netns))
    rs.backend = default_backend()
    return rs


def read_ip6tables(netns=None) -> Ruleset:
    """The namespace's ip6tables rules with counters (ip6tables-save -c)."""
    rs = parse_iptables_save(run_tool(["ip6tables-save", "-c"], netns), family=6)
    rs.backend = default_backend()
    return rs


LEGACY_NAMES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


def read_legacy(netns=None, family: int = 4) -> Optional[Ruleset]:
    """The namespace's iptables-legacy tables (xtables, beside nft), or None when none is loaded there.
    Only tables the namespace already has are read (`/proc/net/ip_tables_names`, per namespace): running
    iptables-legacy-save blindly would load ip_tables and create the tables, changing the system. When
    plain `iptables` is itself legacy, ev.rules holds these already."""
    if default_backend() == "iptables-legacy":
        return None
    try:
        names = run_tool(["cat", LEGACY_NAMES[family]], netns).split()
    except DnattraceError:
        return None         # ip_tables is not loaded: no legacy table anywhere
    if not names:
        return None
    tool = "ip6tables-legacy-save" if family == 6 else "iptables-legacy-save"
    rs = parse_iptables_save(run_tool([tool, "-c"], netns), family)
    rs.source, rs.backend = tool, "iptables-legacy"
    return rs if rs.tables else None


def parse_nft_json(text: str) -> Ruleset:
    """Rules from `nft -j list ruleset` (ip, ip6 and inet families): chains with policies and, where a rule has
    a counter statement, its counters. Rule text is nft's own rendering of the expressions' kinds."""
    rs = Ruleset(source="nft")
    data = json.loads(text or "{}").get("nftables", [])
    for item in data:
        if "chain" in item:
            c = item["chain"]
            if c.get("family") not in IP_FAMILIES:
                continue
            table = "%s %s" % (c["family"], c["table"])
            rs.tables.setdefault(table, {})[c["name"]] = Chain(c["name"], (c.get("policy") or "-").upper())
        elif "rule" in item:
            r = item["rule"]
            if r.get("family") not in IP_FAMILIES:
                continue
            table = "%s %s" % (r["family"], r["table"])
            chain = rs.tables.setdefault(table, {}).setdefault(r["chain"], Chain(r["chain"]))
            pk = by = 0
            words = []
            for e in r.get("expr", []):
                if "counter" in e and isinstance(e["counter"], dict):
                    pk, by = e["counter"].get("packets", 0), e["counter"].get("bytes", 0)
                for k in ("accept", "drop", "reject", "jump", "goto", "dnat", "snat", "masquerade"):
                    if k in e:
                        arg = e[k].get("target") if isinstance(e[k], dict) and k in ("jump", "goto") else None
                        words.append("-j %s" % (arg or k.upper()))
                if "match" in e:
                    words.append(json.dumps(e["match"], separators=(",", ":")))
            text = "-A %s %s handle %s" % (r["chain"], " ".join(words), r.get("handle"))
            chain.rules.append(Rule(table, r["chain"], text, pk, by))
    return rs


def read_nft(netns=None) -> Ruleset:
    return parse_nft_json(run_tool(["nft", "-j", "list", "ruleset"], netns))


def parse_nft_base_chains(text: str) -> list[dict]:
    """Base chains (those attached to a hook) of every ip/ip6/inet nft table, with their rules' counters and
    verdicts: {"family", "table", "chain", "hook", "prio", "policy", "rules": [{"verdict", "packets",
    and "ct_state" (the states a `ct state` match names) when it has one}]}.
    Every base chain on a hook runs: an ACCEPT in iptables-nft's `ip filter` does not stop another
    table's chain from dropping the packet."""
    data = json.loads(text or "{}").get("nftables", [])
    chains = {}
    for item in data:
        c = item.get("chain")
        if c and c.get("family") in IP_FAMILIES and c.get("hook"):
            chains[(c["family"], c["table"], c["name"])] = dict(
                family=c["family"], table=c["table"], chain=c["name"], hook=c["hook"], prio=c.get("prio", 0),
                policy=(c.get("policy") or "accept").upper(), rules=[])
        r = item.get("rule")
        if r and (r.get("family"), r.get("table"), r.get("chain")) in chains:
            verdict, pk, states = "", None, []
            for e in r.get("expr", []):
                if isinstance(e.get("counter"), dict):
                    pk = e["counter"].get("packets", 0)
                m = e.get("match")
                if isinstance(m, dict) and isinstance(m.get("left"), dict) and m["left"].get("ct", {}).get("key") == "state":
                    right = m.get("right")
                    states += right if isinstance(right, list) else [right]
                for k in ("accept", "drop", "reject", "jump", "goto"):
                    if k in e:
                        verdict = k.upper()
            rule = dict(verdict=verdict, packets=pk)
            if states:
                rule["ct_state"] = [str(x) for x in states]
            chains[(r["family"], r["table"], r["chain"])]["rules"].append(rule)
    return list(chains.values())


def read_nft_base_chains(netns=None) -> list[dict]:
    return parse_nft_base_chains(run_tool(["nft", "-j", "list", "ruleset"], netns))


def counter_delta(before: Ruleset, after: Ruleset) -> list[CounterMove]:
    """Rules and policies whose packet counters went up between two readings, most packets first.
    Rules are matched by table, chain, text and position among identical texts (a rule inserted in
    between does not shift the others)."""
    moves = []
    for table, chains in after.tables.items():
        for name, chain in chains.items():
            old = before.chain(table, name)
            if old is not None and chain.policy != "-" and chain.packets > old.packets:
                moves.append(CounterMove(table, name, "policy %s" % chain.policy, chain.packets - old.packets,
                                         chain.bytes - old.bytes, chain.policy, policy=True, family=after.family,
                                         backend=after.backend))
            olds = {}
            for r in (old.rules if old else []):
                olds.setdefault(r.text, []).append(r)
            seen: dict[str, int] = {}
            for r in chain.rules:
                i = seen[r.text] = seen.get(r.text, -1) + 1
                prev = olds.get(r.text, [])
                base = prev[i] if i < len(prev) else None
                d = r.packets - (base.packets if base else 0)
                if d > 0 and base is not None:
                    moves.append(CounterMove(table, name, r.text, d, r.bytes - base.bytes, r.target,
                                             family=after.family, backend=after.backend))
    moves.sort(key=lambda m: -m.packets)
    return moves


@dataclass
class DnatTarget:
    """A DNAT rule for a published port: where the kernel sends connections to that port."""
    proto: str
    port: int               # the published (pre-NAT) port
    addr: str               # the target address
    target_port: int        # the target port (= port when the rule keeps it)
    table: str
    chain: str
    rule: str


def _ports(spec: Optional[str]) -> list[tuple[int, int]]:
    out = []
    for part in (spec or "").split(","):
        if part:
            lo, _, hi = part.replace(":", "-").partition("-")
            out.append((int(lo), int(hi or lo)))
    return out


def _split_destination(dest: str) -> tuple[str, str]:
    """--to-destination ADDR[:PORT[-PORT]] or [IPV6]:PORT -> (address, first port or "")."""
    if dest.startswith("["):
        addr, _, rest = dest[1:].partition("]")
        tport = rest.lstrip(":")
    elif dest.count(":") > 1:        # a bare IPv6 address, no port
        addr, tport = dest, ""
    else:
        addr, _, tport = dest.partition(":")
    return addr, tport.split("-")[0]


def dnat_targets(rules: Ruleset, port: int, proto: str = "tcp") -> list[DnatTarget]:
    """DNAT rules (nat table, any chain: Docker's DOCKER chain or PREROUTING/OUTPUT) for a port."""
    out = []
    for chain in rules.tables.get("nat", {}).values():
        for r in chain.rules:
            if r.target != "DNAT":
                continue
            p = r.option("-p")
            if p and p != proto:
                continue
            ranges = _ports(r.option("--dport")) + _ports(r.option("--dports"))
            if not any(lo <= port <= hi for lo, hi in ranges):
                continue
            addr, tport = _split_destination(r.option("--to-destination") or "")
            out.append(DnatTarget(proto, port, addr, int(tport) if tport else port, "nat", chain.name, r.text))
    return out


def fix_delete(rule: Rule | CounterMove, netns=None) -> str:
    """The command that deletes a rule (its -A line turned into -D)."""
    text = rule.rule if isinstance(rule, CounterMove) else rule.text
    tool = "ip6tables" if getattr(rule, "family", 4) == 6 else "iptables"
    if getattr(rule, "backend", "") == "iptables-legacy" and default_backend() != "iptables-legacy":
        tool += "-legacy"
    return " ".join(command_prefix(netns) + [tool, "-t", rule.table, "-D"] + text.split()[1:])
