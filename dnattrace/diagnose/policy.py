"""The kernel's route lookup replayed through the policy rules (fib_rules_lookup, then fib_table_lookup),
on the rules and the routes of every table read from the namespace (`ip -j rule`, `ip -j route show table
all`), with the packet's own keys: destination, source, input interface.

The kernel answers a route question with a route or an error; it does not say which rule chose the table
that answered. This walk does: rules in priority order, each rule's selector against the packet, the
table it names searched by longest prefix, `throw` and `suppress_prefixlength` honoured, and an action
rule (unreachable, blackhole, prohibit) ending the walk. Selectors it cannot evaluate (a fwmark: the
packet's mark is not in the journey; uid ranges, ports) are reported, not guessed.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

SPECIAL = ("main", "local", "default")
ERRORS = ("unreachable", "blackhole", "prohibit")
_UNEVALUATED = ("fwmark", "uidrange", "ipproto", "sport", "dport", "tos", "dsfield", "l3mdev", "tun_id")


@dataclass
class Walk:
    rule: Optional[dict] = None         # the rule whose table (or action) decided
    table: str = ""                     # the table that answered ("" when no table had a route)
    route: Optional[dict] = None        # the route that matched in it
    unknown: list[str] = field(default_factory=list)   # rules whose selectors could not be evaluated

    @property
    def verdict(self) -> str:
        """route | unreachable | blackhole | prohibit | none (no table had a route: ENETUNREACH)."""
        if self.route is not None:
            kind = self.route.get("type", "unicast")
            return kind if kind in ERRORS else "route"
        if self.rule is not None and self.rule.get("action") in ERRORS:
            return self.rule["action"]
        return "none"

    @property
    def by_policy(self) -> bool:
        """The decision came from a rule of the user's, not from the kernel's own three (local, main, default)."""
        return self.rule is not None and self.rule.get("priority") not in (0, 32766, 32767)


def rule_text(rule: dict) -> str:
    """A rule as `ip rule` prints it: "100: from 203.0.113.0/24 iif eth1 lookup 100"."""
    parts = ["not"] if "not" in rule else []
    src = rule.get("src", "all")
    parts += ["from", src + ("/%d" % rule["srclen"] if "srclen" in rule else "")]
    if "dst" in rule:
        parts += ["to", rule["dst"] + ("/%d" % rule["dstlen"] if "dstlen" in rule else "")]
    for k in ("fwmark", "iif", "oif", "uidrange", "ipproto", "sport", "dport"):
        if k in rule:
            parts += [k, str(rule[k])]
    if "table" in rule:
        parts += ["lookup", rule["table"]]
    elif rule.get("action"):
        parts.append(rule["action"])
    if "suppress_prefixlen" in rule:
        parts += ["suppress_prefixlength", str(rule["suppress_prefixlen"])]
    return "%d: %s" % (rule.get("priority", 0), " ".join(parts))


def route_text(r: Optional[dict]) -> str:
    """A route as `ip route` prints it: "unreachable 198.51.100.0/24", "172.17.0.0/16 dev docker0"."""
    if not r:
        return "no route"
    kind = r.get("type", "unicast")
    words = [] if kind == "unicast" else [kind]
    words.append(r.get("dst", "default"))
    if r.get("gateway"):
        words += ["via", r["gateway"]]
    if r.get("dev"):
        words += ["dev", r["dev"]]
    return " ".join(words)


def _net(addr: str, length: Optional[int], family: int):
    if addr in ("all", "default", None):
        return ipaddress.ip_network("::/0" if family == 6 else "0.0.0.0/0")
    return ipaddress.ip_network(addr if length is None else "%s/%d" % (addr, length), strict=False)


def _selects(rule: dict, dst, src, iif: str, family: int) -> Optional[bool]:
    """Does the rule's selector take this packet? None when it depends on what the journey does not hold."""
    if any(k in rule for k in _UNEVALUATED):
        return None
    ok = src is None or ipaddress.ip_address(src) in _net(rule.get("src", "all"), rule.get("srclen"), family)
    ok = ok and ipaddress.ip_address(dst) in _net(rule.get("dst", "all"), rule.get("dstlen"), family)
    ok = ok and ("iif" not in rule or rule["iif"] == iif)
    ok = ok and "oif" not in rule          # an input lookup has no output interface yet
    return (not ok) if "not" in rule else ok


def _lookup(routes: list[dict], table: str, dst, family: int) -> Optional[dict]:
    """Longest-prefix match in one table (the kernel's fib_table_lookup, without metrics and scopes)."""
    best, best_len = None, -1
    for r in routes:
        if r.get("table", "main") != table or r.get("family", family) != family:
            continue
        d = r.get("dst", "default")
        net = _net("all", None, family) if d == "default" else ipaddress.ip_network(d, strict=False)
        if ipaddress.ip_address(dst) in net and net.prefixlen > best_len:
            best, best_len = r, net.prefixlen
    return best


def walk(rules: list[dict], routes: list[dict], dst: str, src: Optional[str] = None, iif: str = "",
         skip: tuple[int, ...] = ()) -> Walk:
    """The route lookup for a packet to dst (from src, arriving on iif) through the rules, in order.
    `skip`: priorities of rules to leave out (what the lookup would give without them)."""
    family = 6 if ":" in dst else 4
    out = Walk()
    for rule in sorted((r for r in rules if r.get("family", family) == family), key=lambda r: r.get("priority", 0)):
        if rule.get("priority", 0) in skip:
            continue
        sel = _selects(rule, dst, src, iif, family)
        if sel is None:
            out.unknown.append(rule_text(rule))
            continue
        if not sel:
            continue
        if rule.get("action") in ERRORS:
            out.rule = rule
            return out
        table = rule.get("table")
        if table is None:
            continue
        r = _lookup(routes, table, dst, family)
        if r is None or r.get("type") == "throw":
            continue
        plen = 0 if r.get("dst", "default") == "default" else ipaddress.ip_network(r["dst"], strict=False).prefixlen
        if "suppress_prefixlen" in rule and plen <= rule["suppress_prefixlen"]:
            continue
        out.rule, out.table, out.route = rule, table, r
        return out
    return out
