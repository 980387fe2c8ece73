"""One read-only picture of everything the cause catalogue weighs, for the host namespace and (when
there is one) the container's: sysctls, links, routes, neighbours, listeners, firewall rules with
counters, conntrack and SNMP counters. Taken before and after a capture; diff() gives the counters that
moved in between, which is what names the rule that dropped the packets.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Optional

from dnattrace.model import family_of
from dnattrace.target import Target
from dnattrace.evidence import conntrack, firewall, links, nftables, snmp, sockets, sysctl, tc
from dnattrace.evidence.firewall import CounterMove, Ruleset
from dnattrace.evidence.nftables import NftMove, NftRuleset
from dnattrace.evidence.links import Link, RouteResult
from dnattrace.netns.enter import inode as ns_inode
from dnattrace.evidence.sockets import Listener


@dataclass
class NsEvidence:
    name: str                                       # "host", the container's name, ...
    netns: Optional[str] = None                     # path it was read from (None = the caller's)
    inode: int = 0
    sysctls: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)  # main table, short lines
    lookups: list[RouteResult] = field(default_factory=list)
    neighbours: list[dict] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    rules: Optional[Ruleset] = None
    rules6: Optional[Ruleset] = None                # ip6tables' (IPv6 has tables and counters of its own)
    conntrack: dict[str, int] = field(default_factory=dict)
    snmp: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # evidence that could not be read, and why
    nft_chains: list[dict] = field(default_factory=list)  # nft base chains of every table (firewall.py)
    ct_entries: list[str] = field(default_factory=list)  # conntrack entries to the watched ports
    ip_rules: list[str] = field(default_factory=list)    # policy routing rules (`ip -4 rule show`)
    nft: Optional[NftRuleset] = None                # every nft table of every family (nftables.py)
    legacy: Optional[Ruleset] = None                # iptables-legacy tables loaded beside the nft backend
    legacy6: Optional[Ruleset] = None
    rule_list: list[dict] = field(default_factory=list)  # every policy rule, both families (links.policy)
    bpf_progs: list[dict] = field(default_factory=list)  # XDP and tc programs on its interfaces (tc.py)
    qdiscs: list[dict] = field(default_factory=list)     # every qdisc with its drop counter (tc.py)
    table_routes: list[dict] = field(default_factory=list)   # every route of every table, both families

    def link(self, name: str) -> Optional[Link]:
        return next((l for l in self.links if l.name == name), None)

    def lookup(self, dst: str) -> Optional[RouteResult]:
        return next((r for r in self.lookups if r.dst == dst), None)

    def neighbour(self, addr: str) -> Optional[dict]:
        return next((n for n in self.neighbours if n.get("addr") == addr), None)

    def has_address(self, addr: str) -> bool:
        return addr in links.local_addresses(self.links)

    def ruleset(self, family: int = 4) -> Optional[Ruleset]:
        """The iptables rules that see packets of this family."""
        return self.rules6 if family == 6 else self.rules

    def legacy_ruleset(self, family: int = 4) -> Optional[Ruleset]:
        """The iptables-legacy tables of this family, when loaded beside iptables-nft's."""
        return self.legacy6 if family == 6 else self.legacy

    @property
    def both_backends(self) -> bool:
        """iptables-legacy and iptables-nft tables are both loaded: a rule added with one tool is not seen
        by the other's listing, though both rulesets run (the classic "my rule is there but ignored")."""
        xt_nft = self.nft is not None and any(t.backend == "iptables-nft" for t in self.nft.tables.values())
        return bool((self.legacy or self.legacy6) and xt_nft)

    def prefix(self) -> str:
        """Command prefix for fixes that must run in this namespace ("" for the caller's own)."""
        return "nsenter --net=%s " % self.netns if self.netns else ""


def _gather(ev: NsEvidence, what, *args, **kw):
    """Run one reader; a failure becomes a line in ev.errors instead of stopping the whole snapshot."""
    try:
        return what(*args, **kw)
    except Exception as e:  # DnattraceError, pyroute2 / OS errors: keep the rest of the evidence
        ev.errors.append("%s: %s" % (what.__name__, e))
    return None


def read_namespace(name: str, netns=None, ports=(), proto="tcp", lookups=(), neighbours=(),
                   counters_only=False) -> NsEvidence:
    """Evidence from one namespace. lookups: (dst, iif, src) route questions; neighbours: addresses."""
    ev = NsEvidence(name=name, netns=netns, inode=ns_inode(netns))
    ev.rules = _gather(ev, firewall.read_iptables, netns)
    ev.rules6 = _gather(ev, firewall.read_ip6tables, netns)
    ev.legacy = _gather(ev, firewall.read_legacy, netns, 4)
    ev.legacy6 = _gather(ev, firewall.read_legacy, netns, 6)
    ev.nft = _gather(ev, nftables.read, netns, with_text=not counters_only)
    ev.conntrack = _gather(ev, conntrack.stats, netns) or {}
    ev.snmp = _gather(ev, snmp.counters, netns) or {}
    ev.qdiscs = _gather(ev, tc.qdiscs, netns) or []
    if counters_only:
        return ev
    ev.sysctls = _gather(ev, sysctl.read_all, netns) or {}
    ev.links = _gather(ev, links.links, netns) or []
    ev.routes = _gather(ev, links.routes, netns) or []
    for dst, iif, src in lookups:
        r = _gather(ev, links.route_get, dst, iif=iif, src=src, netns=netns)
        if r is not None:
            ev.lookups.append(r)
    for addr in neighbours:
        n = _gather(ev, links.neighbour, addr, netns=netns)
        if n is not None:
            ev.neighbours.append(n)
    if ev.nft is not None:
        ev.nft_chains = firewall.parse_nft_base_chains(json.dumps({"nftables": ev.nft.items}))
    ev.ip_rules = _gather(ev, links.ip_rules, netns) or []
    ev.rule_list, ev.table_routes = _gather(ev, links.policy, netns) or ([], [])
    ev.bpf_progs = _gather(ev, tc.programs, netns) or []
    ev.ct_entries = [e for p in sorted(ports) for e in (_gather(ev, conntrack.entries, proto, p, netns) or [])]
    found = _gather(ev, sockets.listeners, None, proto, netns) or []
    ev.listeners = [l for l in found if not ports or l.port in ports]
    return ev


@dataclass
class Snapshot:
    target: Target
    host: NsEvidence
    container: Optional[NsEvidence] = None
    taken_at: float = 0.0
    # who holds each next-hop address a failure was sent to (locate()): the holder's links, or None when
    # no namespace on this host holds it. An address not in the dict was not looked for.
    holders: dict[str, Optional[NsEvidence]] = field(default_factory=dict)

    @classmethod
    def take(cls, host_netns=None, container_netns=None, target: Optional[Target] = None,
             ingress: Optional[str] = None, client: Optional[str] = None, container_name: str = "container",
             counters_only: bool = False) -> "Snapshot":
        """Read the evidence. ingress/client (the interface and source address the requests arrive with),
        when known, make the host's route lookup the packet's own input lookup; without them it is an
        output lookup."""
        target = target or Target()
        host_lookups, nbrs, ports = [], [], {target.port, target.service_port} - {0}
        # every backend (a dual-stack container has one per family): the lookup of the failing client's
        # family is the packet's own input lookup, the other family's an output lookup
        family = family_of(client or target.service_addr)
        for b in target.backends:
            if b.addr and b.addr not in nbrs:
                same = family_of(b.addr) == family
                host_lookups.append((b.addr, ingress if same else None, client if same else None))
                nbrs.append(b.addr)
        host = read_namespace("host", host_netns, ports, target.proto, host_lookups, nbrs, counters_only)
        cont = None
        if container_netns:
            c_lookups = [(client, None, None)] if client else []
            cont = read_namespace(target.container or container_name, container_netns, {target.service_port},
                                  target.proto, c_lookups, (), counters_only)
        return cls(target, host, cont, time.time())

    def namespaces(self) -> list[NsEvidence]:
        return [self.host] + ([self.container] if self.container else [])

    def by_inode(self, inode: int) -> NsEvidence:
        """The evidence of the namespace a step happened in (the host's when unknown)."""
        return next((e for e in self.namespaces() if inode and e.inode == inode), self.host)

    def to_dict(self):
        def ns(e: Optional[NsEvidence]):
            if e is None:
                return None
            d = dataclasses.asdict(dataclasses.replace(e, rules=None, rules6=None, legacy=None, legacy6=None,
                                                       nft=None))
            for k in ("rules", "rules6", "legacy", "legacy6", "nft"):
                d[k] = getattr(e, k).to_dict() if getattr(e, k) else None
            return d
        return {"target": self.target.to_dict(), "taken_at": self.taken_at,
                "host": ns(self.host), "container": ns(self.container),
                "holders": {a: ns(e) for a, e in self.holders.items()}}

    @classmethod
    def from_dict(cls, d) -> "Snapshot":
        def ns(e):
            if not e:
                return None
            e = dict(e)
            e["links"] = [Link(**l) for l in e.get("links", [])]
            e["lookups"] = [RouteResult(**r) for r in e.get("lookups", [])]
            e["listeners"] = [Listener(**l) for l in e.get("listeners", [])]
            for k in ("rules", "rules6", "legacy", "legacy6"):
                e[k] = Ruleset.from_dict(e[k]) if e.get(k) else None
            e["nft"] = NftRuleset.from_dict(e["nft"]) if e.get("nft") else None
            return NsEvidence(**e)
        return cls(Target.from_dict(d.get("target", {})), ns(d["host"]), ns(d.get("container")), d.get("taken_at", 0.0),
                   {a: ns(e) for a, e in d.get("holders", {}).items()})


def read_links(name: str, netns: str) -> NsEvidence:
    """The little a layer-2 replay needs of a namespace that holds a next hop: its links (state, peer,
    addresses) and sysctls (arp_ignore and the like)."""
    ev = NsEvidence(name=name, netns=netns, inode=ns_inode(netns))
    ev.links = _gather(ev, links.links, netns) or []
    ev.sysctls = _gather(ev, sysctl.read_all, netns) or {}
    return ev


@dataclass
class NsDelta:
    """What moved in one namespace during the capture."""
    name: str
    inode: int
    netns: Optional[str]
    moves: list[CounterMove] = field(default_factory=list)
    conntrack: dict[str, int] = field(default_factory=dict)
    snmp: dict[str, int] = field(default_factory=dict)
    nft_moves: list[NftMove] = field(default_factory=list)         # nft rules (not iptables-nft's: see moves)
    legacy_moves: list[CounterMove] = field(default_factory=list)  # iptables-legacy rules and policies
    qdisc_drops: dict[str, int] = field(default_factory=dict)      # "DEV KIND HANDLE" -> drops in between
    unread: list[str] = field(default_factory=list)  # NsEvidence rulesets ("rules", "nft", ...) not read both times


@dataclass
class Delta:
    namespaces: list[NsDelta] = field(default_factory=list)

    def by_inode(self, inode: int) -> Optional[NsDelta]:
        return next((d for d in self.namespaces if inode and d.inode == inode),
                    self.namespaces[0] if self.namespaces else None)

    def to_dict(self):
        return dataclasses.asdict(self)


def diff(before: Snapshot, after: Snapshot) -> Delta:
    """Counters that moved between two snapshots of the same namespaces."""
    out = Delta()
    for b in before.namespaces():
        a = next((e for e in after.namespaces() if e.inode == b.inode), None)
        if a is None:
            continue
        moves = firewall.counter_delta(b.rules, a.rules) if b.rules and a.rules else []
        if b.rules6 and a.rules6:
            moves = sorted(moves + firewall.counter_delta(b.rules6, a.rules6), key=lambda m: -m.packets)
        out.namespaces.append(NsDelta(b.name, b.inode, b.netns, moves, conntrack.delta(b.conntrack, a.conntrack),
                                      snmp.delta(b.snmp, a.snmp), _nft_moves(b, a), _legacy_moves(b, a),
                                      tc.drops_delta(b.qdiscs, a.qdiscs), _unread(b, a)))
    return out


def _unread(b: NsEvidence, a: NsEvidence) -> list[str]:
    """The rulesets whose counters were not read on both sides: no counter of theirs can refute a rule."""
    return [k for k in ("rules", "rules6", "nft") if getattr(b, k) is None or getattr(a, k) is None] + \
        [k for k in ("legacy", "legacy6") if (getattr(b, k) is None) != (getattr(a, k) is None)]


def _nft_moves(b: NsEvidence, a: NsEvidence) -> list[NftMove]:
    """Counter moves of nft rules; iptables-nft's own tables are left out when iptables-save read them
    (NsDelta.moves names those rules in iptables' words)."""
    if b.nft is None or a.nft is None:
        return []
    moves = nftables.counter_delta(b.nft, a.nft)
    return [m for m in moves if m.backend != "iptables-nft" or not b.ruleset(6 if m.rule.family == "ip6" else 4)]


def _legacy_moves(b: NsEvidence, a: NsEvidence) -> list[CounterMove]:
    moves = []
    for fam in (4, 6):
        if b.legacy_ruleset(fam) and a.legacy_ruleset(fam):
            moves += firewall.counter_delta(b.legacy_ruleset(fam), a.legacy_ruleset(fam))
    return sorted(moves, key=lambda m: -m.packets)
