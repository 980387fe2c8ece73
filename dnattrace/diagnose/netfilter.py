"""Netfilter verdicts replayed: which base chain on the hook dropped the packet (iptables' own tables,
another owner's nft table, bridged traffic sent through iptables by br_netfilter). A rule or policy whose
counter did not move did not drop the packet: such a cause is contradicted, not down-weighted."""
from __future__ import annotations

from typing import Optional

from dnattrace import model
from dnattrace.model import NF, ROUTE
from dnattrace.evidence import firewall, sysctl
from dnattrace.evidence.firewall import CounterMove
from dnattrace.diagnose.facts import Facts, drop_moves, packet
from dnattrace.diagnose.replay import PERSIST, Cause, Match, Replay


def _is_bridged(f: Facts) -> bool:
    """A FORWARD step that bridging, not routing, produced (br_netfilter calls the IPv4 hooks with the
    bridge as both devices): in and out are the same device, or ports of one bridge, or the packet came
    from a bridge or bridge port without any route decision before it. Routed traffic into a bridge
    (a DNATed packet towards docker0) has a route decision and a different input device."""
    for i, s in enumerate(f.journey.steps if f.journey else []):
        if s.point != NF or s.hook != "FORWARD":
            continue
        ev = f.snapshot.by_inode(s.netns)
        inl, outl = ev.link(s.ifname), ev.link(s.out_ifname)
        if s.ifname and s.ifname == s.out_ifname:
            return True
        if inl and outl and inl.master and inl.master == outl.master:
            return True
        routed = any(b.point == ROUTE for b in f.journey.steps[:i])
        if not routed and inl and (inl.kind == "bridge" or inl.master):
            return True
    return False


def _filter_match(f: Facts, hook: str) -> Optional[Match]:
    if not f.seen:
        moves = drop_moves(f, hook)
        if not moves:
            return None
        s = Replay()
        s.add(1, True, "%s (counter moved during the capture)" % moves[0])
        return _filter_result(f, s, hook, moves[0])
    if f.hook != hook or not (f.netfilter_drop or f.stopped_in_hook):
        return None
    s = Replay()
    # the hook may be known from nf_hook_slow's verdict alone (no netfilter-hook step in the journey)
    s.add(3, True, "last netfilter hook reached: %s in %s" % (
        "%s/%s" % (f.nf.hook, f.nf.stage) if f.nf and f.nf.hook == hook else "%s (its verdict)" % hook, f.ns.name))
    s.add(2, f.netfilter_drop, f.drop_line())
    if f.nf is None:
        s.unknown(1, "which chain on the hook returned the verdict (no netfilter links on this kernel: the "
                     "counters stand for it)")
    moves = drop_moves(f, hook)
    rv = _decided(f)
    if rv is not None and not _iptables_filter(rv.chain):
        s.contradict("the base chain that dropped it is %s" % rv.chain)
    if moves:
        s.add(3, True, "%s (counter moved during the capture)" % moves[0])
    elif f.rules is not None and f.nsdelta is not None:
        # a rule or policy whose counter did not move did not drop the packet
        s.contradict(_unmoved(f, hook))
    else:
        s.unknown(3, "the rule counters of %s's filter table in %s" % (f.tool, f.ns.name))
        policy = f.rules.chain("filter", hook) if f.rules else None
        s.add(1, policy is not None and policy.policy == "DROP", "filter %s policy DROP" % hook)
    return _filter_result(f, s, hook, moves[0] if moves else None)


def _unmoved(f: Facts, hook: str) -> str:
    return "no DROP rule or policy counter of %s' filter table's %s path moved in %s" % (f.tool, hook, f.ns.name)


def _refute_filter(hook: str):
    def refute(f: Facts) -> Optional[str]:
        if f.delta is not None and f.rules is not None and not drop_moves(f, hook):
            return _unmoved(f, hook)
        return None
    return refute


def _filter_result(f: Facts, s: Replay, hook: str, move: Optional[CounterMove]) -> Match:
    proto, dst, dport = packet(f)
    chain = move.chain if move else hook
    accept = "%s%s -I %s -d %s -p %s --dport %d -j ACCEPT" % (f.ns.prefix(), f.tool, chain, dst, proto, dport)
    if move and not move.policy:
        fix = [firewall.fix_delete(move, f.ns.netns)]
        note = "or, to keep the rule, let this traffic through before it: " + accept
        what = "the rule `%s` in chain %s" % (move.rule, move.chain)
    else:
        fix = [accept]
        note = "replies need accepting too if nothing accepts established traffic: %s%s -I %s -m conntrack " \
               "--ctstate RELATED,ESTABLISHED -j ACCEPT" % (f.ns.prefix(), f.tool, hook)
        what = "the %s chain's DROP policy" % hook
    return Match(s, "The firewall (%sfilter table, %s hook) in %s drops the packet for %s: %s."
                 % ("ip6tables' " if f.family == 6 else "", hook, f.ns.name, model.hostport(dst, dport), what),
                 fix, note, move).at("%s filter %s %s in %s" % (f.tool, move.chain if move else hook, "rule " + move.rule if move and not move.policy else "policy", f.ns.name))


def match_filter_forward_drop(f: Facts) -> Optional[Match]:
    return _filter_match(f, "FORWARD")


def match_filter_input_drop(f: Facts) -> Optional[Match]:
    return _filter_match(f, "INPUT")


def match_br_netfilter(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    on = sysctl.as_int(f.ns.sysctls, f.br_nf_key) == 1
    if not on or not _is_bridged(f) or not (f.hook == "FORWARD" and (f.netfilter_drop or f.stopped_in_hook)):
        return None
    s = Replay()
    s.add(3, True, "%s = 1" % f.br_nf_key)
    s.add(3, True, "bridged packet (no route decision; in/out are bridge ports) reached %s FORWARD" % f.tool)
    s.add(2, f.netfilter_drop, f.drop_line())
    moves = drop_moves(f, "FORWARD")
    s.add(1, bool(moves), "%s (counter moved during the capture)" % moves[0] if moves else "")
    return Match(s, "br_netfilter sends traffic bridged between ports of one bridge through iptables, and the "
                    "FORWARD chain drops it; the packet never needed routing.",
                 [f.ns.prefix() + "sysctl -w %s=0" % f.br_nf_key],
                 "or keep br_netfilter and accept bridged traffic: " + f.tool + " -I FORWARD -m physdev "
                 "--physdev-is-bridged -j ACCEPT; " + PERSIST, moves[0] if moves else None, workaround=True).at("sysctl %s in %s" % (f.br_nf_key, f.ns.name))


IPTABLES_NFT_TABLES = ("filter", "nat", "mangle", "raw", "security")


def _foreign_drop_chains(f: Facts) -> list[dict]:
    """nft base chains on the packet's hook that belong to another owner than iptables (a `table inet`,
    firewalld, nftables.service) and drop: by policy, or by a DROP/REJECT rule whose counter is set."""
    if not f.hook:
        return []
    out = []
    mine = {4: "ip", 6: "ip6"}[f.family]       # the nft family of iptables-nft (ip6tables-nft) tables
    for c in f.ns.nft_chains:
        if c["hook"] != f.hook.lower() or c["family"] not in (mine, "inet") or \
                (c["family"] == mine and c["table"] in IPTABLES_NFT_TABLES):
            continue
        dropping = [r for r in c["rules"] if r["verdict"] in ("DROP", "REJECT") and r["packets"]]
        if c["policy"] == "DROP" or dropping:
            out.append(c)
    return out


def _iptables_accepted(f: Facts) -> list[CounterMove]:
    """ACCEPT rules of iptables' filter table on the packet's hook whose counters moved."""
    rules = f.rules
    chains = rules.reachable("filter", f.hook) if rules and f.hook else set()
    return [m for m in f.moves() if m.table == "filter" and m.chain in chains and m.target == "ACCEPT"]


def match_foreign_nft_drop(f: Facts) -> Optional[Match]:
    if not f.seen or not f.netfilter_drop or not f.hook:
        return None
    chains = _foreign_drop_chains(f)
    if not chains:
        return None
    c = chains[0]
    accepted = _iptables_accepted(f)
    s = Replay()
    s.add(3, True, f.drop_line() + " on the %s hook" % f.hook)
    s.add(3, True, "nft table %s %s, base chain %s (hook %s, priority %s): policy %s%s" % (
        c["family"], c["table"], c["chain"], c["hook"], c["prio"], c["policy"],
        "; no rule in it accepts the packet" if not any(r["verdict"] == "ACCEPT" for r in c["rules"]) else ""))
    # iptables' own filter table did not drop it (no DROP counter moved; its ACCEPT may have counted it,
    # when its chain runs first)
    dropped_by_iptables = drop_moves(f, f.hook)
    rv = _decided(f)
    if rv is not None and _iptables_filter(rv.chain):
        s.contradict("the base chain that dropped it is %s" % rv.chain)
    elif rv is not None and rv.rule and not rv.policy:
        s.contradict("a rule of %s dropped it, not the chain's policy: %s" % (rv.chain, rv.rule))
    if dropped_by_iptables:
        s.contradict("%s (counter moved: iptables' own filter table dropped it)" % dropped_by_iptables[0])
    s.add(2, True, "%s (counter moved during the capture: iptables accepted it)"
          % accepted[0] if accepted else "no DROP rule or policy counter of iptables' filter table moved")
    proto, dst, dport = packet(f)
    nft = f.ns.prefix() + "nft insert rule %s %s %s " % (c["family"], c["table"], c["chain"])
    fix = [nft + "ct state established,related accept",
           nft + "%s daddr %s %s dport %d accept" % ("ip6" if f.family == 6 else "ip", dst, proto, dport)]
    return Match(s, "Another nft table than iptables' own, %s %s, has a base chain %s on the %s hook that drops the "
                    "packet for %s:%d. Every base chain on a hook runs, so Docker's ACCEPT in the iptables filter "
                    "table does not save it: that table must accept it too."
                 % (c["family"], c["table"], c["chain"], f.hook, dst, dport), fix,
                 "with firewalld: firewall-cmd --zone=trusted --add-interface=<bridge>; deleting the table "
                 "removes the user's firewall").at("nft %s %s %s (hook %s) in %s" % (c["family"], c["table"], c["chain"], c["hook"], f.ns.name))


def match_foreign_nft_reply_drop(f: Facts) -> Optional[Match]:
    if not f.seen or f.journey.direction != "reply" or not f.netfilter_drop or not f.hook:
        return None
    chains = [c for c in _foreign_drop_chains(f)
              if not any(r["verdict"] == "ACCEPT" and {"established", "related"} & set(r.get("ct_state", []))
                         for r in c["rules"])]
    if not chains:
        return None
    c = chains[0]
    passed = any(s.point == NF and s.hook == f.hook and s.stage == "last" and s.netns == f.ns.inode
                 for r in (f.conn.requests if f.conn else []) for s in r.steps)
    ct = next((s.ct for s in reversed(f.journey.steps) if s.ct), None)
    new_only = [r for r in c["rules"] if r["verdict"] == "ACCEPT" and "new" in r.get("ct_state", [])]
    s = Replay()
    s.add(3, True, f.drop_line() + " on the %s hook; the dropped packet is a reply (from the service)" % f.hook)
    s.add(3, True, "nft table %s %s, base chain %s (hook %s, priority %s): policy %s, no rule accepts "
          "established/related traffic" % (c["family"], c["table"], c["chain"], c["hook"], c["prio"], c["policy"]))
    s.add(2, passed, "the request passed the same hook (%s) in %s" % (f.hook, f.ns.name))
    s.add(1, ct is not None and ct.state in ("REPLY", "ESTABLISHED"), "conntrack state of the reply: %s" % ct.state
          if ct else "")
    if new_only:
        s.note("a rule accepts only ct state new (%d packets)" % (new_only[0]["packets"] or 0))
    nft = f.ns.prefix() + "nft insert rule %s %s %s " % (c["family"], c["table"], c["chain"])
    return Match(s, "nft table %s %s (not Docker's) has a base chain %s on the %s hook that lets the requests through "
                    "but drops their replies: it has no `ct state established,related accept`, so the connection "
                    "never completes." % (c["family"], c["table"], c["chain"], f.hook),
                 [nft + "ct state established,related accept"]).at("nft %s %s %s (hook %s) in %s" % (c["family"], c["table"], c["chain"], c["hook"], f.ns.name))


def _iptables_filter(c) -> bool:
    """The chain is iptables' (or ip6tables') own filter table, whichever backend runs it."""
    return c.backend in ("iptables-nft", "iptables-legacy") and c.table == "filter"


def _decided(f: Facts):
    """The chain attribution when it named a chain (by counter, by evaluation, or as the one left), and
    only where the namespace's whole nft ruleset was read: without it the other owners' chains on the
    hook are unseen, and the one chain left would be a guess."""
    if f.ns.nft is None:
        return None
    rv = f.verdict
    return rv if rv is not None and rv.how != "undecided" and rv.chain.chain else None


def match_chain_drop(f: Facts) -> Optional[Match]:
    """Any base chain of any table, family, backend or owner that the attribution names as the one that
    dropped the packet (a raw- or mangle-priority chain, a netdev ingress chain, iptables-legacy tables,
    a ban list's table): the rule as its owner's tool prints it, and the fix in the owner's language."""
    rv = _decided(f) if f.seen else None
    if rv is None:
        return None
    s = Replay()
    s.add(3, True, f.drop_line() + (" on the %s hook" % rv.chain.hook if rv.chain.hook else ""))
    how = {"counter": "its counter moved by %d during the capture" % rv.packets,
           "evaluated": "the first rule whose verdict matches, evaluated against the packet"}.get(rv.how, "")
    if rv.rule:
        s.add(3, bool(how), "%s%s: %s (%s)" % (rv.chain, " -> " + rv.user_chain if rv.user_chain else "",
                                             rv.rule, how or rv.how))
    elif rv.policy:
        s.add(3, bool(how), "%s: policy %s (%s)" % (rv.chain, rv.verdict, how or rv.how))
    else:
        s.add(1, True, "%s: every other chain on the hook is ruled out" % rv.chain)
        s.unknown(2, "which rule of %s dropped it" % rv.chain)
    for line in rv.refuted:
        s.note("other chain: " + line)
    what = ("the rule `%s`%s" % (rv.rule, " in chain %s" % rv.user_chain if rv.user_chain else "") if rv.rule
            else "its policy %s" % rv.verdict if rv.policy else "a rule not identified")
    return Match(s, "The base chain %s on the %s hook in %s drops the packet: %s."
                 % (rv.chain, rv.chain.hook, f.ns.name, what), rv.fix or None, rv.fix_note,
                 obj="%s%s" % (rv.chain, ": " + rv.rule if rv.rule else ""))


def _refute_br_netfilter(f: Facts) -> Optional[str]:
    if sysctl.as_int(f.ns.sysctls, f.br_nf_key) == 0:
        return "%s = 0 in %s" % (f.br_nf_key, f.ns.name)
    return None


CAUSES = (
    Cause("filter-forward-drop", "A firewall rule or policy in FORWARD drops it", match_filter_forward_drop,
          defers_to=("br-netfilter", "foreign-nft-drop", "stale-nat-target"), refute=_refute_filter("FORWARD")),
    Cause("filter-input-drop", "A firewall rule or policy in INPUT drops it", match_filter_input_drop,
          refute=_refute_filter("INPUT")),
    Cause("br-netfilter", "Bridged traffic filtered by iptables (br_netfilter)", match_br_netfilter,
          refute=_refute_br_netfilter),
    Cause("foreign-nft-drop", "Another nft table's base chain drops it", match_foreign_nft_drop,
          defers_to=("foreign-nft-reply-drop",)),
    Cause("foreign-nft-reply-drop", "Another nft table drops the replies (no established accept)",
          match_foreign_nft_reply_drop),
    Cause("chain-drop", "A netfilter base chain drops it", match_chain_drop,
          defers_to=("filter-forward-drop", "filter-input-drop", "br-netfilter", "foreign-nft-drop",
                     "foreign-nft-reply-drop", "stale-nat-target", "conntrack-full", "route-localnet")),
)
