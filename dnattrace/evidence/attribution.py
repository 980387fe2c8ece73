"""Which base chain, and which rule in it, gave a packet its verdict at the hook where its journey ended.

Every base chain registered on a hook runs, in priority order, whatever its table, family, backend or
owner: iptables-nft's `ip filter FORWARD`, a `table inet firewalld`, a fail2ban table, iptables-legacy's
filter table. An ACCEPT in one does not save the packet from a DROP in the next; the first DROP ends it.
So the question is asked of every chain on the hook that the packet could still reach (priority at or
after the last probe it passed), and answered from what the kernel counted:
  - a rule or policy whose counter moved during the capture could have dropped it (`how="counter"`);
  - one whose counter did not move did NOT drop it (it is refuted, and the reason says so);
  - counterless nft rules are evaluated against the packet (nfeval.py): the first rule whose verdict
    matches is named (`how="evaluated"`), an expression not evaluated leaves the chain undecided;
  - a chain left alone when every other one is refuted is the one (`how="chain"`, the rule unknown);
  - otherwise `how="undecided"`, the candidates listed in `refuted`-style lines: never a guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dnattrace import model
from dnattrace.model import ChainRef
from dnattrace.evidence import fixes, hooks, nfeval
from dnattrace.evidence.hooks import chains_on_hook  # noqa: F401  (the interface: attribution.chains_on_hook)
from dnattrace.evidence.firewall import CounterMove, Ruleset
from dnattrace.evidence.nftables import NftRuleset
from dnattrace.evidence.snapshot import NsDelta, NsEvidence
from dnattrace.kernel import plan
from dnattrace.kernel.plan import STAGE_PRIORITY
from dnattrace.kernel.kallsyms import base_name

# Where the kernel frees a packet a netfilter verdict refused
NF_DROP_SITES = ("nft_do_chain", "nf_hook_slow", "ipt_do_table", "ip6t_do_table", "ebt_do_table", "arpt_do_table")
DROPPING = {"drop": ("drop", "reject"), "accept": ("accept",), "reject": ("reject",)}


@dataclass
class RuleVerdict:
    """Which chain and rule decided a packet's fate at one hook."""
    chain: ChainRef                 # the base chain that returned the verdict (the rule may sit in a user chain it jumps to)
    rule: str = ""                  # as its owner's tool prints it ("-A DOCKER-USER -s 198.51.100.2/32 -j DROP", or
                                    #   nft -a form "ip saddr 198.51.100.2 drop # handle 7"); "" if unknown
    user_chain: str = ""            # the (non-base) chain holding the rule, when different from chain.chain
    policy: bool = False            # the base chain's policy decided, not a rule
    verdict: str = "drop"           # drop | reject | accept
    how: str = "counter"            # counter | evaluated | chain | undecided
    packets: int = 0                # counter delta during the capture (0 when not counted)
    fix: list[str] = field(default_factory=list)    # commands in the owner's language, in order
    fix_note: str = ""              # raw nft/iptables fallback; "the owner rewrites raw changes" notes
    refuted: list[str] = field(default_factory=list)  # other chains/policies on the hook that did NOT drop it, and why

    def to_dict(self):
        return model.to_dict(self)


@dataclass
class _Finding:
    """What the evidence says about one candidate chain."""
    chain: ChainRef
    status: str                     # counter | evaluated | possible | refuted
    why: str = ""
    rule: str = ""
    user_chain: str = ""
    policy: bool = False
    verdict: str = "drop"
    packets: int = 0
    rule_obj: object = None         # the Rule / NftRule, for the fix
    path: tuple = ()                # the chains evaluation went through (a firewalld zone's names the zone)


# ---------------------------------------------------------------- where the journey ended

def _ending(journey: model.Journey) -> Optional[tuple[model.Step, str, int, Optional[model.Step]]]:
    """(drop step, hook, lowest priority a dropping chain can have, the NF step last seen there) of a
    journey that ended in netfilter."""
    drop = journey.drop
    if drop is None:
        return None
    before = [s for s in journey.steps if s.ts_ns <= drop.ts_ns and s is not drop]
    verdict = next((s for s in reversed(journey.steps) if s.point == model.VERDICT and s.hook), None)
    nf = next((s for s in reversed(before) if s.point == model.NF and s.netns == drop.netns), None)
    if nf is None or nf.stage == "last":
        nf = None
    site = base_name(drop.location.split("+")[0]) if drop.location else ""
    if drop.reason not in ("NETFILTER_DROP", "NF_DROP") and site not in NF_DROP_SITES and verdict is None:
        return None
    rx = next((s for s in reversed(before) if s.point == model.RX and s.netns == drop.netns), None)
    if nf is not None and not (rx is not None and rx.ts_ns > nf.ts_ns):
        prio = nf.priority if nf.stage == "chain" or nf.stage not in STAGE_PRIORITY else STAGE_PRIORITY[nf.stage]
        return drop, nf.hook, prio if prio is not None else -(1 << 31), nf
    if rx is not None and "netfilter hooks" not in journey.unobservable:
        # received and freed by nft before any IP hook's first position saw it: an ingress chain. (fexit on
        # nf_hook_slow also reports the ingress hook's verdict, numbered like PREROUTING: not trusted here.)
        return drop, "ingress", -(1 << 31), None
    if verdict is not None:
        return drop, verdict.hook, -(1 << 31), None
    return None


def _window(chains: list[ChainRef], hook: str, last: Optional[model.Step], lowest: int) -> list[ChainRef]:
    """The chains that may have dropped a packet last seen at priority `lowest`: those at or after it, and,
    when that was a chain bracket, only the group it opens (the next group's bracket did not see it)."""
    after = [c for c in chains if c.priority >= lowest]
    if last is None or last.stage != "chain" or last.priority is None:
        return after
    starts = plan.groups(hook, [c.priority for c in chains])
    nxt = next((g for g in starts if g > last.priority + 1), None)
    return [c for c in after if nxt is None or c.priority < nxt]


def _packet(journey: model.Journey, hook: str, drop: model.Step) -> nfeval.Packet:
    """The packet as the hook saw it: its last tuple and devices there, and its conntrack state."""
    at = [s for s in journey.steps if s.point == model.NF and s.hook == hook and s.netns == drop.netns
          and s.ts_ns <= drop.ts_ns]
    if hook in hooks.DEV_HOOKS:     # no probe there: the packet as it was received
        at = [s for s in journey.steps if s.point == model.RX and s.netns == drop.netns and s.ts_ns <= drop.ts_ns]
        t = at[-1].tuple if at else None
        return nfeval.Packet.of(t, at[-1].ifname if at else "")
    last = at[-1] if at else drop
    t = last.tuple or (journey.tuples() or [None])[-1]
    ct = next((s.ct for s in reversed(at) if s.ct), None)
    return nfeval.Packet.of(t, last.ifname, last.out_ifname, ct)


# ---------------------------------------------------------------- judging one chain

def _xt_rules(ns: NsEvidence, c: ChainRef, family: int) -> Optional[Ruleset]:
    return ns.legacy_ruleset(family) if c.backend == "iptables-legacy" else ns.ruleset(family)


def _xt_moves(ns: NsEvidence, nsdelta: NsDelta, c: ChainRef, family: int) -> list[CounterMove]:
    moves = nsdelta.legacy_moves if c.backend == "iptables-legacy" else nsdelta.moves
    fam = 6 if c.family == "ip6" else 4
    return [m for m in moves if m.family == fam and m.backend == c.backend and m.table == c.table]


def _judge_xt(ns, nsdelta, c: ChainRef, family: int, verdict: str) -> Optional[_Finding]:
    """An iptables chain (nft or legacy backend): every rule and built-in policy counts, so its counters
    alone decide. None when they cannot (no counters read, or rules not read)."""
    rules = _xt_rules(ns, c, family)
    read = ("legacy" if c.backend == "iptables-legacy" else "rules") + ("6" if c.family == "ip6" else "")
    if nsdelta is None or read in nsdelta.unread or rules is None or rules.chain(c.table, c.chain) is None:
        return None         # without both readings, a counter that did not move proves nothing
    reach = hooks.xt_reach(rules, c.table, c.chain)
    want = [v.upper() for v in DROPPING[verdict]]
    moved = [m for m in _xt_moves(ns, nsdelta, c, family) if m.chain in reach and m.target in want
             and (not m.policy or m.chain == c.chain)]
    policy = rules.chain(c.table, c.chain).policy
    if not moved:
        return _Finding(c, "refuted", "%s %s %s: no %s rule or policy counter moved during the capture "
                        "(policy %s)" % (c.backend, c.table, c.chain, "/".join(want), policy))
    if len({(m.chain, m.rule) for m in moved}) > 1:
        return _Finding(c, "possible", "%s %s %s: several counters moved: %s" % (
            c.backend, c.table, c.chain, "; ".join(str(m) for m in moved)))
    m = moved[0]
    rule = next((r for r in rules.chain(c.table, m.chain).rules if r.text == m.rule), None)
    return _Finding(c, "counter", str(m), "" if m.policy else m.rule, "" if m.chain == c.chain else m.chain,
                    m.policy, m.target.lower(), m.packets, rule)


def _judge_nft(ns, nsdelta, c: ChainRef, pkt: nfeval.Packet, verdict: str) -> _Finding:
    """An nft chain: the counters of rules that count, then evaluation of the chain against the packet."""
    rs = ns.nft
    reach = hooks.nft_reach(rs, c.family, c.table, c.chain)
    want = DROPPING[verdict]
    device = rs.chain(c.family, c.table, c.chain).device
    if c.hook in hooks.DEV_HOOKS and device and pkt.iif and pkt.iif not in device.split(","):
        return _Finding(c, "refuted", "%s %s %s: on device %s, not %s" % (c.family, c.table, c.chain, device, pkt.iif))
    if nsdelta is not None and "nft" in nsdelta.unread:
        nsdelta = None      # nft's counters were not read both times: they say nothing here
    moved = [m for m in (nsdelta.nft_moves if nsdelta else []) if (m.rule.family, m.rule.table) ==
             (c.family, c.table) and m.rule.chain in reach and m.rule.verdict in want]
    if len(moved) == 1:
        r = moved[0].rule
        return _Finding(c, "counter", "%s (counter moved during the capture)" % r.shown(), r.shown(),
                        "" if r.chain == c.chain else r.chain, False, r.verdict, moved[0].packets, r)
    if moved:
        return _Finding(c, "possible", "%s %s %s: several counters moved: %s" % (
            c.family, c.table, c.chain, "; ".join(m.rule.shown() for m in moved)))
    unmoved = set()
    if nsdelta is not None:     # a counting rule whose counter stood still did not match this packet
        unmoved = {(r.chain, r.handle) for name in reach for r in rs.chain(c.family, c.table, name).rules
                   if r.packets is not None}
    out = nfeval.evaluate(rs, rs.chain(c.family, c.table, c.chain), pkt, unmoved)
    label = "%s %s %s (priority %d)" % (c.family, c.table, c.chain, c.priority)
    if out.verdict == "undecided":
        if not _can_give(rs, c, reach, want):
            return _Finding(c, "refuted", "%s: no rule in it or the chains it jumps to can %s, policy %s"
                            % (label, "/".join(want), rs.chain(c.family, c.table, c.chain).policy))
        return _Finding(c, "possible", "%s: evaluation cannot decide: %s" % (label, out.why))
    if out.verdict not in want:
        return _Finding(c, "refuted", "%s: evaluated, %s %s it" % (
            label, "policy" if out.policy else "`%s`" % out.rule.shown(), _verb(out.verdict)))
    text = "" if out.policy else out.rule.shown()
    return _Finding(c, "evaluated", "%s: evaluated, %s %s it" % (
        label, "policy" if out.policy else "`%s`" % text, _verb(out.verdict)), text,
        "" if out.chain == c.chain else out.chain, out.policy, out.verdict, 0, out.rule, out.path)


def _verb(v: str) -> str:
    return {"accept": "accepts", "drop": "drops", "reject": "rejects"}.get(v, v + "s")


def _can_give(rs: NftRuleset, c: ChainRef, reach: list[str], want) -> bool:
    """Whether any rule of the chain (or one it jumps to), or its policy, gives one of `want`."""
    base = rs.chain(c.family, c.table, c.chain)
    if base.policy in want:
        return True
    return any(r.verdict in want or r.verdict == "continue" and nfeval.may_give(r, want)
               for name in reach for r in rs.chain(c.family, c.table, name).rules)


def _judge(ns, nsdelta, c: ChainRef, family: int, pkt, verdict: str) -> _Finding:
    if c.backend != "nft" and nsdelta is not None:
        f = _judge_xt(ns, nsdelta, c, family, verdict)
        if f is not None:
            return f
    if ns.nft is not None and c.backend != "iptables-legacy" and ns.nft.chain(c.family, c.table, c.chain):
        return _judge_nft(ns, nsdelta, c, pkt, verdict)
    return _Finding(c, "possible", "%s %s %s: its rules and counters were not read" % (c.backend, c.table, c.chain))


# ---------------------------------------------------------------- the decision

def attribute(journey: model.Journey, ns: NsEvidence, nsdelta: Optional[NsDelta],
              verdict: str = "drop") -> Optional[RuleVerdict]:
    """The chain and rule that gave `verdict` for this journey's packet at the hook where it ended (the drop
    step's hook: the last NF step, or the VERDICT step on kernels without netfilter links), in the
    namespace whose evidence is `ns`. None when the packet did not end in netfilter or nothing can be said."""
    end = _ending(journey)
    if end is None:
        return None
    drop, hook, lowest, last = end
    pkt = _packet(journey, hook, drop)
    family = pkt.family
    found = [_judge(ns, nsdelta, c, family, pkt.at(hook, c.priority), verdict)
             for c in _window(chains_on_hook(ns, family, hook), hook, last, lowest)]
    if not found:
        return None
    return _decide(found, ns, pkt, family, hook)


def _decide(found: list[_Finding], ns: NsEvidence, pkt, family: int, hook: str) -> RuleVerdict:
    """Counters first (exactly one chain's moved); then priority order: refuted chains are passed, the first
    chain evaluated to drop it is the one, a chain that may have is the one only when nothing else may.
    Undecided: chain.table and chain.chain are "", the candidates are the `refuted` lines "candidate: ..."."""
    counted = [f for f in found if f.status == "counter"]
    alive = [f for f in found if f.status != "refuted"]
    first = alive[0] if alive else None
    pick = None
    if len(counted) == 1:
        # a counter that moved is the kernel's word, unless a chain that runs before it may have
        # dropped the packet, or one is evaluated to drop it
        c = counted[0]
        if not any(f is not c and (f.status == "evaluated" or f.chain.priority < c.chain.priority) for f in alive):
            pick = c
    elif not counted and first is not None and len(alive) == 1 and _complete(ns):
        pick = first        # every other chain on the hook is ruled out
    elif not counted and first is not None and first.status == "evaluated" and \
            not any(f is not first and f.chain.priority == first.chain.priority for f in alive):
        pick = first        # the chains after it never see the packet (same priority: their order is unknown)
    if pick is None:
        return RuleVerdict(ChainRef(first.chain.family if first else "", "", "", hook, 0), how="undecided",
                           refuted=["candidate: %s" % f.why for f in alive] +
                           [f.why for f in found if f.status == "refuted"])
    how = pick.status if pick.status in ("counter", "evaluated") else "chain"
    rv = RuleVerdict(pick.chain, pick.rule, pick.user_chain, pick.policy, pick.verdict if how != "chain" else "drop",
                     how, pick.packets, refuted=[f.why for f in found if f is not pick and f.status == "refuted"])
    if how == "chain" and pick.why:
        rv.refuted.append("rule unknown: " + pick.why)
    rv.fix, rv.fix_note = fixes.for_verdict(rv, ns, pkt, pick.rule_obj, family, pick.path)
    return rv


def _complete(ns: NsEvidence) -> bool:
    """Whether every chain on the hook is known: nft's whole ruleset and the legacy tables were read. A
    chain left alone among those read is otherwise not the answer (another owner's may be unseen)."""
    return ns.nft is not None and not any(e.startswith("read_legacy") or e.startswith("read:") for e in ns.errors)


def chains_passed(journey: model.Journey, ns: NsEvidence) -> list[tuple[ChainRef, str]]:
    """The base chains of `ns` on each hook the journey went through there, in order, each with what the
    journey says of it: "passed" (seen after it: the hook's last position or a later chain bracket),
    "dropped" (the only group the packet can have ended in), or "reached" (it may have ended there)."""
    out = []
    steps = [s for s in journey.steps if s.point == model.NF and (not ns.inode or s.netns == ns.inode)]
    family = next((s.tuple.family for s in steps if s.tuple), 4)
    end = _ending(journey)
    for hook in journey.hooks_seen(ns.inode or None):
        chains = chains_on_hook(ns, family, hook)
        at = [s for s in steps if s.hook == hook]
        if any(s.stage == "last" for s in at):
            out += [(c, "passed") for c in chains]
            continue
        last = at[-1] if at else None
        lowest = end[2] if end and end[1] == hook else -(1 << 31)
        window = _window(chains, hook, last, lowest) if end and end[1] == hook else chains
        state = "dropped" if end and end[1] == hook and len({c.priority for c in window}) == 1 else "reached"
        out += [(c, "passed" if c not in window else state) for c in chains
                if c in window or c.priority < lowest]
    return out
