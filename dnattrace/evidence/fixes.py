"""The fix for a rule or policy that dropped a packet, in its owner's language.

An owner that manages its rules rewrites them: firewalld on reload, ufw on enable, Docker on restart (all but
DOCKER-USER), CrowdSec's bouncer and fail2ban on their next ban or sync. A raw `nft`/`iptables` edit of their
rules is lost, so the owner's command comes first and the raw one is the fallback, with a note saying so.
"""
from __future__ import annotations

import re
from typing import Optional

from dnattrace.evidence import nfeval, owners
from dnattrace.evidence.firewall import CounterMove, Rule, default_backend, fix_delete
from dnattrace.evidence.nftables import NftRule

REWRITES = {"docker": "Docker rewrites its chains (all but DOCKER-USER) when it restarts",
            "podman": "netavark rewrites its rules when a container or network starts",
            "firewalld": "firewalld rewrites its table on every reload",
            "ufw": "ufw rewrites its chains when it reloads",
            "kube-proxy": "kube-proxy rewrites its rules on its next sync",
            "cni": "the CNI plugin rewrites its rules when a pod starts",
            "crowdsec": "the CrowdSec bouncer restores its bans on its next sync",
            "fail2ban": "fail2ban restores its bans when the jail restarts",
            "nftables": "a raw change is lost at the next boot unless /etc/nftables.conf gets it too"}
_ZONE = re.compile(r"_(?:IN|FWD|FWDI|FWDO|PRE|POST)_([A-Za-z0-9-]+?)(?:_allow|_deny|_log|_pre|_post)?$")
_JAIL = re.compile(r"^(?:addr-set-|f2b-)(.+)$")


def _owner(rv) -> str:
    if rv.user_chain:
        owner = owners.of_chain(rv.user_chain)
        if owner != "unknown":
            return owner
    return rv.chain.owner


def _xt_tool(rv, family: int) -> str:
    tool = "ip6tables" if family == 6 else "iptables"
    if rv.chain.backend == "iptables-legacy" and default_backend() != "iptables-legacy":
        tool += "-legacy"
    return tool


def raw_fix(rv, ns, pkt, rule_obj, family: int) -> str:
    """The raw command on the ruleset the drop happened in: delete the rule, or let the packet through
    before a dropping policy."""
    ip = "ip6" if family == 6 else "ip"
    proto = {6: "tcp", 17: "udp"}.get(pkt.proto, "")
    c = rv.chain
    catch_all = _catch_all(rule_obj)     # a rule that drops whatever reaches it: let this packet by first
    if c.backend in ("iptables-nft", "iptables-legacy") and isinstance(rule_obj, Rule) and not rv.policy \
            and not catch_all:
        return fix_delete(_as_legacy(rule_obj, c.backend, family), ns.netns)
    if c.backend != "nft" and (rv.policy or catch_all or not isinstance(rule_obj, NftRule)):
        ports = " -p %s --dport %d" % (proto, pkt.dport) if proto else ""
        return "%s%s -t %s -I %s -d %s%s -j ACCEPT" % (ns.prefix(), _xt_tool(rv, family), c.table, c.chain,
                                                      pkt.dst, ports)
    if isinstance(rule_obj, NftRule) and not rv.policy and not catch_all:
        return "%snft delete rule %s %s %s handle %d" % (ns.prefix(), rule_obj.family, rule_obj.table,
                                                         rule_obj.chain, rule_obj.handle)
    ports = " %s dport %d" % (proto, pkt.dport) if proto else ""
    return "%snft insert rule %s %s %s %s daddr %s%s accept" % (ns.prefix(), c.family, c.table, c.chain, ip,
                                                               pkt.dst, ports)


def _catch_all(rule) -> bool:
    """A rule without a match (`-A FORWARD -j DROP`, firewalld's final `reject`): deleting it would open
    everything; an accept for the packet before it is the fix."""
    if isinstance(rule, NftRule):
        return not any(isinstance(e, dict) and ("match" in e or "xt" in e) for e in rule.expr)
    if isinstance(rule, Rule):
        return len(rule.text.split()) <= 4 and rule.option("-j") is not None
    return False


def _as_legacy(rule: Rule, backend: str, family: int) -> CounterMove:
    """The rule as fix_delete takes it: it names the tool from the rule's family and backend."""
    return CounterMove(rule.table, rule.chain, rule.text, 0, 0, rule.target, family=family, backend=backend)


def owner_fix(owner: str, rv, ns, pkt, family: int, path=()) -> Optional[list[str]]:
    """Commands in the owner's own language, or None when the owner has none for this. path: the chains
    the packet went through (evaluation), the last one of a firewalld zone naming the zone."""
    p, proto = ns.prefix(), {6: "tcp", 17: "udp"}.get(pkt.proto, "tcp")
    where = rv.user_chain or rv.chain.chain
    if owner == "crowdsec":
        return ["%scscli decisions delete --ip %s" % (p, pkt.src)]
    if owner == "fail2ban":
        set_name = _set_of(rv)
        m = _JAIL.match(set_name or where)
        jail = m.group(1) if m else "JAIL"
        return ["%sfail2ban-client set %s unbanip %s" % (p, jail, pkt.src)]
    if owner == "firewalld":
        return _firewalld_fix(rv, pkt, p, proto, family, [where] + list(path))
    if owner == "ufw":
        verb = "route allow" if rv.chain.hook == "FORWARD" else "allow"
        return ["%sufw %s proto %s to %s port %d" % (p, verb, proto, pkt.dst, pkt.dport)]
    if owner == "docker" and rv.chain.backend != "nft":
        if rv.user_chain == "DOCKER-USER":
            return None     # the user's own rule: deleting it is the fix (the raw command)
        return ["%s%s -I DOCKER-USER -d %s -p %s --dport %d -j ACCEPT" % (p, _xt_tool(rv, family), pkt.dst, proto,
                                                                           pkt.dport)]
    return None


def _replies_fix(rv, ns, pkt) -> str:
    """An nft chain that drops the request by its policy drops the replies too unless it accepts established
    traffic: replay the reply (conntrack state established) through it, and add the rule if it is dropped."""
    rs = ns.nft
    c = rv.chain
    if not (rv.policy and c.backend == "nft" and rs is not None and c.hook == "FORWARD" and pkt.src):
        return ""
    chain = rs.chain(c.family, c.table, c.chain)
    reply = nfeval.Packet(pkt.family, pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport, pkt.oif, pkt.iif,
                          "established")
    if chain is None or nfeval.evaluate(rs, chain, reply).verdict == "accept":
        return ""
    return "%snft insert rule %s %s %s ct state established,related accept" % (ns.prefix(), c.family, c.table,
                                                                             c.chain)


def _firewalld_fix(rv, pkt, p, proto, family, chains) -> list[str]:
    """firewalld: a forwarded packet's output interface into the trusted zone (what Docker's documentation
    asks for docker0), a local service's port opened in its zone, anything else a rich rule in the zone."""
    zone = next((m.group(1) for m in map(_ZONE.search, reversed(chains)) if m), None)
    zone = zone or "$(firewall-cmd --get-zone-of-interface=%s)" % (pkt.iif or "IFACE")
    reload = "%sfirewall-cmd --reload" % p
    if rv.chain.hook == "FORWARD" and pkt.oif:
        return ["%sfirewall-cmd --permanent --zone=trusted --change-interface=%s" % (p, pkt.oif), reload]
    if rv.chain.hook == "INPUT":
        return ["%sfirewall-cmd --permanent --zone=%s --add-port=%d/%s" % (p, zone, pkt.dport, proto), reload]
    fam = "ipv6" if family == 6 else "ipv4"
    return ["%sfirewall-cmd --permanent --zone=%s --add-rich-rule='rule family=\"%s\" destination address=\"%s\" "
            "port port=\"%d\" protocol=\"%s\" accept'" % (p, zone, fam, pkt.dst, pkt.dport, proto), reload]


def _set_of(rv) -> str:
    m = re.search(r"@([\w.-]+)", rv.rule or "")
    return m.group(1) if m else ""


def for_verdict(rv, ns, pkt, rule_obj, family: int, path=()) -> tuple[list[str], str]:
    """(fix commands, note): the owner's commands first, the raw command as the fallback."""
    if rv.verdict == "accept":
        return [], ""
    owner = _owner(rv)
    raw = raw_fix(rv, ns, pkt, rule_obj, family)
    mine = owner_fix(owner, rv, ns, pkt, family, path)
    replies = _replies_fix(rv, ns, pkt)
    if replies and not mine:
        return [raw, replies], REWRITES.get(owner, "")
    if mine:
        return mine, "raw fallback: %s (%s)" % (raw, REWRITES.get(owner, "the owner may rewrite it"))
    note = REWRITES.get(owner, "")
    if owner == "docker" and rv.user_chain == "DOCKER-USER":
        note = "DOCKER-USER is yours: Docker keeps it across restarts"
    return [raw], note
