"""`drops --by chain` / `--by rule`: the netfilter drops of an interval split by the chain (or rule) whose
counter moved, in every table of every family and backend of the watched namespace.

The kernel frees every netfilter drop in nft_do_chain (or nf_hook_slow) with NETFILTER_DROP: the site
does not say which chain. The counters do, for rules and iptables policies that count; what no counter
explains (a counterless nft rule, an nft chain's policy: nft keeps no policy counter) is shown as such,
never spread over the chains that may have done it.
"""
from __future__ import annotations

from dnattrace.evidence import firewall, nftables
from dnattrace.evidence.firewall import CounterMove
from dnattrace.evidence.nftables import NftMove
from dnattrace.netns.enter import inode

NF_SITES = ("nft_do_chain", "nf_hook_slow", "ipt_do_table", "ip6t_do_table", "ebt_do_table", "arpt_do_table")
DROP_TARGETS = ("DROP", "REJECT")
UNCOUNTED = "(no counter moved: a counterless nft rule or an nft chain policy)"
NOT_NETFILTER = "(not netfilter)"
ELSEWHERE = "(netfilter; counters not read: --netns %s)"


class Reading:
    """Every counter of one namespace's firewall: iptables (both families), legacy tables, nft."""

    def __init__(self, netns=None):
        self.rules = _quiet(firewall.read_iptables, netns)
        self.rules6 = _quiet(firewall.read_ip6tables, netns)
        self.legacy = _quiet(firewall.read_legacy, netns, 4)
        self.legacy6 = _quiet(firewall.read_legacy, netns, 6)
        self.nft = _quiet(nftables.read, netns)

    def moves_since(self, old: "Reading") -> list[tuple[str, str, str, int]]:
        """(chain, rule, owner, packets) of every dropping rule or policy whose counter moved since `old`."""
        out = []
        for a, b in ((old.rules, self.rules), (old.rules6, self.rules6), (old.legacy, self.legacy),
                     (old.legacy6, self.legacy6)):
            if a is not None and b is not None:
                out += [_xt_row(m) for m in firewall.counter_delta(a, b) if m.target in DROP_TARGETS]
        if old.nft is not None and self.nft is not None:
            out += [_nft_row(m) for m in nftables.counter_delta(old.nft, self.nft)
                    if m.rule.verdict in ("drop", "reject") and not (m.backend == "iptables-nft" and self.rules)]
        return out


def _quiet(read, *args, **kw):
    """A reading that cannot be made (a tool missing) is left out, not fatal: the others still count."""
    try:
        return read(*args, **kw)
    except Exception:     # DnattraceError, OSError: that ruleset is not shown
        return None


def _xt_row(m: CounterMove):
    tool = "%s%s" % ("ip6tables" if m.family == 6 else "iptables", "-legacy" if m.backend == "iptables-legacy" else "")
    return ("%s %s %s" % (tool, m.table, m.chain), m.rule, "", m.packets)


def _nft_row(m: NftMove):
    r = m.rule
    return ("nft %s %s %s" % (r.family, r.table, r.chain), r.shown(), m.owner, m.packets)


class ChainCounts:
    """Readings of one namespace, kept for the interval's moves and the moves since start."""

    def __init__(self, netns=None, name="host"):
        self.netns, self.name = netns, name
        self.inode = inode(netns)
        self.first = self.last = Reading(netns)

    def rows(self, described: list[dict], by: str, seconds: float, since_start=False) -> list[dict]:
        """The interval's rows (or, since_start, the run's), by chain or by rule: the counted ones, what
        no counter explains, and the drops that were not netfilter's."""
        now = Reading(self.netns)
        moves = now.moves_since(self.first if since_start else self.last)
        if not since_start:
            self.last = now
        return split(described, moves, by, self.name, seconds, self.inode)


def split(described: list[dict], moves, by: str, netns_name: str, seconds: float = 0.0,
          inode: int = 0) -> list[dict]:
    """Rows by chain (or rule) from the counter moves; the netfilter drops the moves do not cover, those of
    namespaces whose counters were not read, and the other drops, as a row each. Busiest first."""
    mine = [d for d in described if _netfilter(d) and (not inode or d.get("netns_inode") in (inode, None))]
    nf = sum(d["count"] for d in mine)
    other = sum(d["count"] for d in described if not _netfilter(d))
    elsewhere: dict[str, int] = {}
    for d in described:
        if _netfilter(d) and d not in mine:
            elsewhere[d.get("netns", "?")] = elsewhere.get(d.get("netns", "?"), 0) + d["count"]
    merged: dict[tuple, dict] = {}
    for chain, rule, owner, packets in moves:
        key = (chain,) if by == "chain" else (chain, rule)
        row = merged.setdefault(key, {"count": 0, "chain": chain, "rule": rule if by == "rule" else "",
                                      "owner": owner, "netns": netns_name})
        row["count"] += packets
    rows = sorted(merged.values(), key=lambda r: -r["count"])
    counted = sum(r["count"] for r in rows)
    if nf > counted:
        rows.append({"count": nf - counted, "chain": UNCOUNTED, "rule": "", "owner": "", "netns": netns_name})
    for name, count in sorted(elsewhere.items(), key=lambda kv: -kv[1]):
        rows.append({"count": count, "chain": ELSEWHERE % name, "rule": "", "owner": "", "netns": name})
    if other:
        rows.append({"count": other, "chain": NOT_NETFILTER, "rule": "", "owner": "", "netns": ""})
    for r in rows:
        r["rate"] = round(r["count"] / seconds, 1) if seconds else None
    return rows


def _netfilter(d: dict) -> bool:
    return d.get("reason") == "NETFILTER_DROP" or str(d.get("function", "")).split(".")[0] in NF_SITES
