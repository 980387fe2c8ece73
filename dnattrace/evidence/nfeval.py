"""Replay an nft chain against one packet, for rules that keep no counter: the first rule whose match
holds decides, as nft_do_chain does (jump pushes a return point, goto does not, return pops, the end of
the base chain is its policy).

Only what the journey tells about the packet is evaluated: addresses and prefixes, ports and ranges, the
layer-4 protocol, the IP family, input/output interface names (with nft's `*` wildcard), conntrack state,
anonymous and named sets. Any other expression (marks, fib, limits, tcp flags, maps, concatenations, an
iptables extension) makes the outcome "undecided", with the expression named: never a guess.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Optional

from dnattrace import model
from dnattrace.evidence.nftables import JUMPS, VERDICTS, NftChain, NftRule, NftRuleset

PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136, "dccp": 33}
PORTED = (6, 17, 132, 136, 33)
NAT = ("dnat", "snat", "masquerade", "redirect")
HARMLESS = ("counter", "log", "notrack", "comment")     # statements that neither match nor decide
CT_STATES = {"NEW": "new", "ESTABLISHED": "established", "RELATED": "related", "REPLY": "established",
             "INVALID": "invalid", "UNTRACKED": "untracked"}


class Undecided(Exception):
    """An expression this evaluator does not follow."""


@dataclass(frozen=True)
class Packet:
    family: int
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    iif: str = ""
    oif: str = ""
    ct_state: str = ""          # new | established | related | invalid | untracked; "" unknown
    dnat: Optional[tuple[str, int]] = None

    @classmethod
    def of(cls, t: Optional[model.Tuple5], iif="", oif="", ct: Optional[model.CtInfo] = None) -> "Packet":
        if t is None:
            return cls(4, 0, "", 0, "", 0, iif, oif)
        return cls(t.family, t.proto, t.src, t.sport, t.dst, t.dport, iif, oif,
                   CT_STATES.get(ct.state, "") if ct else "", ct.dnat if ct else None)

    def at(self, hook: str, priority: int) -> "Packet":
        """The packet as a chain at this priority sees it: before conntrack (-200) it has no state; after
        DNAT (-100) in PREROUTING/OUTPUT its destination is the rewritten one."""
        p = self
        if hook in ("PREROUTING", "OUTPUT") and priority <= -200 or hook in ("ingress", "egress"):
            p = replace(p, ct_state="")
        if hook in ("PREROUTING", "OUTPUT") and priority > -100 and p.dnat:
            p = replace(p, dst=p.dnat[0], dport=p.dnat[1])
        return p


@dataclass
class Outcome:
    verdict: str                    # accept | drop | reject | queue | undecided
    rule: Optional[NftRule] = None  # the deciding rule; None for the policy
    chain: str = ""                 # the chain holding that rule (the base chain for the policy)
    policy: bool = False
    why: str = ""                   # undecided: the expression not followed
    path: tuple[str, ...] = ()      # the chains entered, in order (a firewalld zone's chain names its zone)


def evaluate(rs: NftRuleset, base: NftChain, pkt: Packet, unmatched=frozenset()) -> Outcome:
    """The verdict the chain gives the packet. unmatched: (chain, handle) of rules known not to have
    matched (a counter that did not move)."""
    stack: list[tuple[NftChain, int]] = []
    chain, i, hops, path = base, 0, 0, [base.name]
    while hops < 10000:
        hops += 1
        if i >= len(chain.rules):
            if not stack:
                return Outcome(chain.policy, None, chain.name, True, path=tuple(path))
            chain, i = stack.pop()
            continue
        rule = chain.rules[i]
        i += 1
        if (rule.chain, rule.handle) in unmatched:
            continue
        try:
            if not matches(rs, rule, pkt):
                continue
            v = verdict_of(rule)
        except Undecided as e:
            return Outcome("undecided", rule, chain.name, why="`%s`: %s" % (rule.shown(), e), path=tuple(path))
        if v in VERDICTS:
            return Outcome(v, rule, chain.name, path=tuple(path))
        if v in JUMPS:
            target = rs.chain(chain.family, chain.table, rule.target)
            if target is None:
                return Outcome("undecided", rule, chain.name, why="chain %s is not in the ruleset" % rule.target)
            if v == "jump":
                stack.append((chain, i))
            chain, i = target, 0
            path.append(target.name)
        elif v == "return":
            if not stack:
                return Outcome(base.policy, None, base.name, True, path=tuple(path))
            chain, i = stack.pop()
    return Outcome("undecided", why="the chains loop")


def verdict_of(rule: NftRule) -> str:
    """The rule's verdict once it matches; a NAT statement ends the chain like accept; an iptables
    target (xt) is named by its extension."""
    for e in rule.expr:
        if not isinstance(e, dict):
            continue
        for k in NAT:
            if k in e:
                return "accept"
        xt = e.get("xt")
        if isinstance(xt, dict) and xt.get("type") == "target":
            name = xt.get("name", "")
            if name in ("REJECT", "DROP", "ACCEPT"):
                return name.lower()
            raise Undecided("iptables target %s" % name)
    return rule.verdict


def may_give(rule: NftRule, want) -> bool:
    """Whether a rule without a plain verdict may still give one of `want` (an iptables target, a map)."""
    for e in rule.expr:
        if isinstance(e, dict) and ("vmap" in e or "xt" in e and e["xt"].get("type") == "target"):
            return True
        m = e.get("match") if isinstance(e, dict) else None
        if isinstance(m, dict) and isinstance(m.get("right"), dict) and "vmap" in m["right"]:
            return True
    return False


def matches(rs: NftRuleset, rule: NftRule, pkt: Packet) -> bool:
    for e in rule.expr:
        if not isinstance(e, dict):
            continue
        key = next(iter(e), "")
        if key == "match":
            if not _match(rs, rule, e["match"], pkt):
                return False
        elif key == "xt":
            if e["xt"].get("type") == "match" and e["xt"].get("name") != "comment":
                raise Undecided("iptables match %s" % e["xt"].get("name"))
        elif key in ("limit", "quota", "meter", "vmap", "set", "map", "numgen", "jhash", "symhash"):
            raise Undecided("%s is not evaluated" % key)
        elif key in ("mangle",):
            raise Undecided("a statement that rewrites the packet (mangle)")
    return True


# ---------------------------------------------------------------- one match

def _left(left, pkt: Packet):
    """The packet's value for a match's left side; None when the packet has no such field (an IPv4 match
    on an IPv6 packet, a port on ICMP: the rule does not match)."""
    if not isinstance(left, dict):
        raise Undecided("left side %r" % (left,))
    if "payload" in left:
        p = left["payload"]
        proto, fld = p.get("protocol"), p.get("field")
        if proto in ("ip", "ip6"):
            if pkt.family != (4 if proto == "ip" else 6):
                return None
            if fld in ("saddr", "daddr"):
                return ipaddress.ip_address(pkt.src if fld == "saddr" else pkt.dst)
            if fld in ("protocol", "nexthdr"):
                return pkt.proto
        elif proto in ("tcp", "udp", "sctp", "udplite", "dccp", "th"):
            if proto != "th" and pkt.proto != PROTOS[proto] or proto == "th" and pkt.proto not in PORTED:
                return None
            if fld in ("sport", "dport"):
                return pkt.sport if fld == "sport" else pkt.dport
        raise Undecided("payload %s %s" % (proto, fld))
    if "meta" in left:
        k = left["meta"].get("key")
        if k in ("iifname", "oifname", "iif", "oif"):
            name = pkt.iif if k.startswith("i") else pkt.oif
            if not name:
                raise Undecided("meta %s: the device is not known" % k)
            return name
        if k == "l4proto":
            return pkt.proto
        if k == "nfproto":
            return "ipv4" if pkt.family == 4 else "ipv6"
        if k == "protocol":
            return "ip" if pkt.family == 4 else "ip6"
        raise Undecided("meta %s" % k)
    if "ct" in left and left["ct"].get("key") == "state":
        if not pkt.ct_state:
            raise Undecided("ct state: the packet's conntrack state is not known here")
        return ("ct_state", pkt.ct_state)
    raise Undecided("%s" % next(iter(left), "?"))


def _scalar(v, like):
    """A rule's value in the type of the packet's."""
    if isinstance(like, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_address(v)
    if isinstance(like, int) and isinstance(v, str):
        if v in PROTOS:
            return PROTOS[v]
        try:
            return int(v)
        except ValueError:
            raise Undecided("value %r" % v) from None
    return v


def _member(value, elem) -> bool:
    """Whether one set element (a value, a prefix, a range, a timed element) holds the value."""
    if isinstance(elem, dict):
        if "elem" in elem:
            return _member(value, elem["elem"].get("val") if isinstance(elem["elem"], dict) else elem["elem"])
        if "prefix" in elem:
            net = ipaddress.ip_network("%s/%s" % (elem["prefix"]["addr"], elem["prefix"]["len"]), strict=False)
            return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and \
                value.version == net.version and value in net
        if "range" in elem:
            lo, hi = (_scalar(x, value) for x in elem["range"])
            return type(lo) is type(value) and lo <= value <= hi
        raise Undecided("set element %s" % next(iter(elem), "?"))
    if isinstance(value, str) and isinstance(elem, str) and elem.endswith("*") and not elem.endswith("\\*"):
        return value.startswith(elem[:-1])
    try:
        v = _scalar(elem, value)
    except ValueError:
        return False
    return type(v) is type(value) and v == value


def _elements(rs: NftRuleset, rule: NftRule, right) -> list:
    if isinstance(right, str) and right.startswith("@"):
        t = rs.table(rule.family, rule.table)
        s = t.sets.get(right[1:]) if t else None
        if s is None:
            raise Undecided("set %s is not in the ruleset" % right)
        return list(s.get("elem", []))
    if isinstance(right, dict) and "set" in right:
        return right["set"] if isinstance(right["set"], list) else [right["set"]]
    return [right]


def _match(rs: NftRuleset, rule: NftRule, m: dict, pkt: Packet) -> bool:
    value = _left(m.get("left"), pkt)
    if value is None:
        return False
    op, right = m.get("op", "=="), m.get("right")
    if isinstance(value, tuple) and value[0] == "ct_state":
        states = right if isinstance(right, list) else [right]
        if isinstance(right, dict) and "set" in right:
            states = right["set"]
        hit = value[1] in states
        return (not hit) if op == "!=" else hit
    if op in ("==", "!=", "in"):
        hit = any(_member(value, e) for e in _elements(rs, rule, right))
        return (not hit) if op == "!=" else hit
    if op in ("<", ">", "<=", ">="):
        v = _scalar(right, value)
        return {"<": value < v, ">": value > v, "<=": value <= v, ">=": value >= v}[op]
    raise Undecided("operator %s" % op)
