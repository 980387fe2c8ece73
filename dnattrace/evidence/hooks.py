"""The base chains registered on a netfilter hook of a namespace, of every table, family and backend, at
their priorities: what attribution asks about a dropped packet, and where watch links its chain brackets.

nft tables report their own priorities; iptables-legacy tables register at fixed ones (NF_IP_PRI_*).
When nft cannot be read, iptables' own tables are placed at those fixed priorities too.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Optional

from dnattrace.errors import DnattraceError
from dnattrace.model import ChainRef
from dnattrace.evidence import firewall, nftables, owners
from dnattrace.evidence.firewall import Ruleset
from dnattrace.evidence.nftables import NftRuleset

if TYPE_CHECKING:
    from dnattrace.evidence.snapshot import NsEvidence

log = logging.getLogger(__name__)

IP_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
DEV_HOOKS = ("ingress", "egress")
# The priorities xtables tables register at (include/uapi/linux/netfilter_ipv4.h, NF_IP_PRI_*); nat's
# differ per hook: DNAT before filter, SNAT after it.
XT_PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
XT_NAT_PRIORITY = {"PREROUTING": -100, "OUTPUT": -100, "INPUT": 100, "POSTROUTING": 100}


def _hook_name(nft_hook: str) -> str:
    up = nft_hook.upper()
    return up if up in IP_HOOKS else nft_hook


def _families(family: int, hook: str) -> tuple[str, ...]:
    if hook in DEV_HOOKS:
        return ("netdev", "inet")
    return ("ip6" if family == 6 else "ip", "inet")


def nft_reach(rs: NftRuleset, family: str, table: str, chain: str) -> list[str]:
    """Chains a packet entering `chain` can visit (jumps and gotos), in the order they are named."""
    out, todo = [], [chain]
    while todo:
        name = todo.pop(0)
        c = rs.chain(family, table, name)
        if name in out or c is None:
            continue
        out.append(name)
        todo += [r.target for r in c.rules if r.target]
    return out


def xt_reach(rules: Ruleset, table: str, chain: str) -> list[str]:
    out, todo = [], [chain]
    while todo:
        name = todo.pop(0)
        c = rules.chain(table, name)
        if name in out or c is None:
            continue
        out.append(name)
        todo += [r.target for r in c.rules if r.target and rules.chain(table, r.target) is not None]
    return out


def _xt_priority(table: str, hook: str) -> int:
    return XT_NAT_PRIORITY.get(hook, 0) if table == "nat" else XT_PRIORITY.get(table, 0)


def _xt_chains(rules: Optional[Ruleset], family: int, hook: str) -> list[ChainRef]:
    """The built-in chains of iptables tables on a hook, at their tables' fixed priorities."""
    out = []
    for table, chains in (rules.tables.items() if rules and hook in IP_HOOKS else ()):
        c = chains.get(hook)
        if c is not None and c.policy != "-":
            out.append(ChainRef("ip6" if family == 6 else "ip", table, hook, hook, _xt_priority(table, hook),
                                rules.backend, owners.of_iptables(xt_reach(rules, table, hook)[1:])))
    return out


def chains_on_hook(ns: NsEvidence, family: int, hook: str) -> list[ChainRef]:
    """Every base chain of every table/backend/owner registered on that hook for packets of that IP family
    (ip/ip6 tables of the family, inet, iptables-legacy tables), ordered by priority."""
    out = []
    if ns.nft is not None:
        fams = _families(family, hook)
        for c in ns.nft.base_chains():
            if c.family in fams and _hook_name(c.hook) == hook:
                t = ns.nft.table(c.family, c.table)
                owner = t.owner if t.owner in ("nftables",) or t.name in owners.TABLE_OWNERS else \
                    owners.of_iptables(nft_reach(ns.nft, c.family, c.table, c.name)[1:] + [c.name])
                out.append(ChainRef(c.family, c.table, c.name, hook, c.prio, t.backend, owner))
    else:       # nft not readable: iptables' own tables at their fixed priorities
        out += _xt_chains(ns.ruleset(family), family, hook)
    out += _xt_chains(ns.legacy_ruleset(family), family, hook)
    return sorted(out, key=lambda c: c.priority)


XT_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
              "mangle": IP_HOOKS, "raw": ("PREROUTING", "OUTPUT"), "security": ("INPUT", "FORWARD", "OUTPUT")}


def _legacy_tables(netns, family: int) -> Optional[Ruleset]:
    """The legacy tables a namespace has, as empty rulesets of their built-in chains: their priorities are
    fixed by their names, so /proc/net/ip_tables_names is enough (no iptables-legacy-save)."""
    if firewall.default_backend() == "iptables-legacy":
        return None
    try:
        names = firewall.run_tool(["cat", firewall.LEGACY_NAMES[family]], netns).split()
    except DnattraceError:
        return None
    rs = Ruleset(family=family, backend="iptables-legacy")
    for t in names:
        rs.tables[t] = {c: firewall.Chain(c, "ACCEPT") for c in XT_BUILTIN.get(t, ())}
    return rs if rs.tables else None


def bracket_priorities(netns=None) -> dict[tuple[int, str], list[int]]:
    """(family, hook) -> the sorted priorities where base chains run in the namespace (for watch's chain
    brackets). Read-only and cheap enough to repeat while watching: nft's listing and the names of the
    namespace's legacy tables."""
    try:
        nft = nftables.read(netns, with_text=False)
    except DnattraceError as e:
        log.info("no chain brackets in %s: %s", netns or "this namespace", e)
        return {}
    ev = SimpleNamespace(nft=nft, legacy=_legacy_tables(netns, 4), legacy6=_legacy_tables(netns, 6))
    ev.ruleset = lambda fam: None
    ev.legacy_ruleset = lambda fam: ev.legacy6 if fam == 6 else ev.legacy
    out = {}
    for fam in (4, 6):
        for hook in IP_HOOKS:
            prios = sorted({c.priority for c in chains_on_hook(ev, fam, hook)})
            if prios:
                out[(fam, hook)] = prios
    return out
