"""The cause catalogue: why a connection failed, as data plus one small match function per cause.

Each match function reads what the kernel reported about a failing connection (drop function and reason,
the netfilter hook it last reached, the shape of the journey: routed towards a device, delivered to a
namespace, answered with a RST, no reply ever left) and the evidence of a Snapshot and its counter Delta,
and says how much of the cause's evidence is present. Nothing here matches on a scenario's name or on
addresses: the same functions must explain faults nobody wrote a test for.

Weights: every `_Score.add(weight, present, line)` is one piece of evidence the cause expects; the
confidence is the share of the weight that is present. A cause only counts at all when its gate (what the
kernel must have shown for the cause to be possible) holds. A healthy connection yields no finding.
"""
from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from dnattrace import model
from dnattrace.model import NF, ROUTE, RX, VERDICT, Connection, Journey, Step
from dnattrace.evidence import conntrack as ct_stats
from dnattrace.evidence import sysctl
from dnattrace.evidence import firewall
from dnattrace.evidence.firewall import DROP_TARGETS, CounterMove
from dnattrace.evidence.snapshot import Delta, NsDelta, NsEvidence, Snapshot

from dnattrace.kernel.kallsyms import base_name
from dnattrace.kernel.reasons import meaning as reason_meaning

NONE = "none"               # the cause id of a healthy connection (no finding)
PERSIST = "persist it in /etc/sysctl.d/ (e.g. /etc/sysctl.d/99-dnattrace.conf) so it survives a reboot"
NETFILTER_FUNCS = ("nft_do_chain", "ipt_do_table", "nf_hook_slow")
EVIDENCE_ONLY_CAP = 0.5     # no packet was seen: evidence alone is never more than a suspicion


@dataclass
class Finding:
    cause_id: str
    title: str
    confidence: float                   # 0..1: share of the cause's expected evidence that is present
    explanation: str                    # plain words, with this case's devices and addresses
    evidence: list[str] = field(default_factory=list)   # "net.ipv4.conf.veth-ext.forwarding = 0", ...
    fix: Optional[list[str]] = None     # commands to run, in order; None when no command can fix it
    fix_note: str = ""                  # e.g. how to persist the fix, or an alternative
    rule: Optional[dict] = None         # {"table", "chain", "rule", "packets"} of the rule/policy that dropped
    netns: str = ""                     # name of the namespace where it happened ("host", a container)
    connections: int = 1                # failing connections this finding explains
    workaround: bool = False            # the fix works around the cause rather than curing it
    ruled_out: list[str] = field(default_factory=list)  # alternatives checked and refuted, and why

    def to_dict(self):
        return {k: v for k, v in asdict(self).items() if v is not None and v != "" and v != []}


def top_cause(findings: list[Finding]) -> str:
    """The top cause's id, or "none" for a healthy result."""
    return findings[0].cause_id if findings else NONE


# --- what one failing connection shows ---------------------------------------------------------------

class Facts:
    """The kernel's report on one failing connection, joined with the evidence of the namespace where
    it ended. Match functions read only this."""

    def __init__(self, conn: Optional[Connection], snapshot: Snapshot, delta: Optional[Delta]):
        self.conn, self.snapshot, self.delta = conn, snapshot, delta
        self.journey: Optional[Journey] = representative(conn) if conn else None
        j = self.journey
        self.drop: Optional[Step] = j.drop if j else None
        self.end: Optional[Step] = (j.end_step or j.last) if j and j.steps else None
        # by name without compiler suffixes: 6.1 drops in ip_rcv_finish_core.constprop.0
        self.func = base_name(self.drop.location.split("+")[0]) if self.drop else ""
        self.reason = self.drop.reason if self.drop else ""
        where = self.end.netns if self.end else 0
        self.ns: NsEvidence = snapshot.by_inode(where)
        if where and self.ns.inode != where:    # a namespace no evidence was read from (the client's)
            self.ns = NsEvidence(name=self.end.netns_name or "netns %d" % where, inode=where)
        self.nsdelta: Optional[NsDelta] = delta.by_inode(self.ns.inode) if delta else None
        self.reason_inferred = bool(self.drop and self.drop.reason_inferred)
        if self.drop and not self.reason and self.func == "ip_forward" and self._moved("IpFragFails"):
            # a kernel without drop reasons (before 5.17): ip_forward drops for several reasons, and the
            # one that counts IpFragFails is a packet too big for the next link (frag_needed). Written
            # on the step too, so the journey shown with the diagnosis says it (marked inferred).
            self.reason, self.reason_inferred = "PKT_TOO_BIG", True
            self.drop.reason, self.drop.reason_inferred = self.reason, True
        # the packet's IP family: which rules (iptables or ip6tables), sysctls and backend are its own
        tuples = j.tuples() if j else []
        self.family: int = tuples[0].family if tuples else 4
        self.rules = self.ns.ruleset(self.family)
        self.tool = "ip6tables" if self.family == 6 else "iptables"
        # br_netfilter passes bridged packets to each family's tables under its own switch
        self.br_nf_key = "net.bridge.bridge-nf-call-%s" % self.tool
        self.nf: Optional[Step] = self._last(NF)
        # where netfilter links are not available (kernels before 6.4) the hook comes from the verdict
        # of nf_hook_slow (fexit/kretprobe)
        verdict = self._last(VERDICT)
        self.hook = verdict.hook if verdict else (self.nf.hook if self.nf else None)
        rx = self._last(RX, same_ns=True)
        self.ingress = rx.ifname if rx else ""
        self.dest = self._dest()
        self.route: Optional[Step] = self._forward_route()

    def _last(self, point, same_ns=False) -> Optional[Step]:
        if not self.journey:
            return None
        for s in reversed(self.journey.steps):
            if s.point == point and (not same_ns or not self.end or s.netns == self.end.netns):
                return s
        return None

    def _forward_route(self) -> Optional[Step]:
        """The route step of the packet's own destination: the last forward lookup for it, else the last
        forward lookup, else the last route step. The lookups arrive in the kernel's order, which differs
        between kernels and probes: a reverse-path (source validation) lookup, for the client's address,
        may come last, and its device says nothing about where the packet was going."""
        routes = [s for s in (self.journey.steps if self.journey else ()) if s.point == ROUTE]
        forward = [s for s in routes if not (s.route and s.route.reverse)]
        own = [s for s in forward if s.route and self.dest[0] and s.route.dst == self.dest[0]]
        return (own or forward or routes or [None])[-1]

    def _dest(self) -> tuple[str, int]:
        """Where the packet was going after NAT: conntrack's view, else the last tuple, else the target."""
        if self.journey:
            for s in reversed(self.journey.steps):
                if s.ct and s.ct.dnat:
                    return s.ct.dnat
            tuples = self.journey.tuples()
            if tuples and self.journey.direction == "request":
                return tuples[-1].dst, tuples[-1].dport
        return self.service_addr, self.snapshot.target.service_port

    @property
    def service_addr(self) -> str:
        """The address DNAT sends this packet's family to (the target's first backend when it has none
        of that family, as for IPv4 alone)."""
        t = self.snapshot.target
        b = t.backend_for(self.family)
        return b.addr if b else t.service_addr

    @property
    def seen(self) -> bool:
        return self.journey is not None

    @property
    def neighbour_failed(self) -> bool:
        """Dropped waiting for a neighbour that never answered: at neigh_invalidate (NEIGH_FAILED), or
        purged from its queue when the unresolved entry is destroyed (neigh_destroy, QUEUE_PURGE): one
        fault, two sites, depending on which comes first for a given packet."""
        return (self.reason == "NEIGH_FAILED" or self.func == "neigh_invalidate"
                or (self.func == "neigh_destroy" and self.reason == "QUEUE_PURGE"))

    @property
    def netfilter_drop(self) -> bool:
        return self.reason == "NETFILTER_DROP" or self.func in NETFILTER_FUNCS

    @property
    def stopped_in_hook(self) -> bool:
        """No drop event, but the packet entered a hook and never reached that hook's last probe."""
        return (self.journey is not None and self.drop is None and self.journey.outcome == "unfinished"
                and self.nf is not None and self.nf.stage != "last")

    def moves(self) -> list[CounterMove]:
        """The rule counters that moved in the packet's namespace, of its family's tables."""
        return [m for m in self.nsdelta.moves if m.family == self.family] if self.nsdelta else []

    def _moved(self, counter: str) -> bool:
        return bool(self.nsdelta and self.nsdelta.snmp.get(counter, 0) > 0)

    def drop_line(self) -> str:
        if not self.drop:
            return ""
        return "dropped at %s in %s, reason %s%s (%s)" % (
            self.drop.location or "?", self.ns.name, self.reason or "?",
            " (inferred: this kernel reports no drop reasons)" if self.reason_inferred else "",
            reason_meaning(self.reason))

    def delivered_to_listener_ns(self) -> Optional[Journey]:
        """A request journey that was delivered (consumed by a socket) somewhere."""
        for j in (self.conn.requests if self.conn else []):
            if j.outcome == "delivered":
                return j
        return None


def representative(conn: Connection) -> Optional[Journey]:
    """The journey that says most about the failure: a dropped request, a dropped reply, an unfinished
    request, else the last request. When the replies were all dropped, the dropped reply: the packets
    the client sends after it (its RST to an unknown SYN-ACK) are consequences, not the failure."""
    if conn.outcome == "reply-unfinished":
        return conn.replies[0]      # no reply was dropped: the one still parked is the failure
    groups = (conn.replies, conn.requests) if conn.outcome in ("reply-dropped", "stalled") else (conn.requests, conn.replies)
    for group in groups:
        for j in group:
            if j.outcome == "dropped":
                return j
    for j in conn.requests:
        if j.outcome == "unfinished":
            return j
    return conn.requests[-1] if conn.requests else (conn.replies[-1] if conn.replies else None)


def failing(conn: Connection) -> bool:
    """Healthy = answered by something other than a RST and no request dropped after the answer."""
    return conn.outcome != "answered"


class _Score:
    def __init__(self):
        self.got = self.total = 0.0
        self.evidence: list[str] = []

    def add(self, weight: float, present, line: str = ""):
        self.total += weight
        if present:
            self.got += weight
            if line:
                self.evidence.append(line)

    def note(self, line: str):
        """Evidence shown for context that does not weigh either way."""
        if line:
            self.evidence.append(line)

    @property
    def value(self) -> float:
        return self.got / self.total if self.total else 0.0


@dataclass
class Match:
    score: _Score
    explanation: str
    fix: Optional[list[str]] = None
    fix_note: str = ""
    rule: Optional[CounterMove] = None
    workaround: bool = False        # the fix lets the traffic through without curing the cause


@dataclass(frozen=True)
class Cause:
    id: str
    title: str
    match: Callable[[Facts], Optional[Match]]


# --- helpers on evidence ------------------------------------------------------------------------------

def _kv(values: dict, key: str) -> str:
    return "%s = %s" % (key, values.get(key, "?"))


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


def _drop_moves(f: Facts, hook: str) -> list[CounterMove]:
    """DROP/REJECT rules and DROP policies that moved, in chains a packet entering `hook` visits."""
    out = []
    rules = f.rules
    for table in ("filter", "ip filter"):
        chains = rules.reachable(table, hook) if rules else {hook}
        for m in f.moves():
            if m.table == table and m.chain in chains and m.target in DROP_TARGETS:
                out.append(m)
    return out


def _rule_dict(m: Optional[CounterMove]) -> Optional[dict]:
    return None if m is None else {"table": m.table, "chain": m.chain, "rule": m.rule, "packets": m.packets}


def _packet(f: Facts) -> tuple[str, str, int]:
    """(proto name, destination address, destination port) of the packet where it was dropped."""
    s = f.drop or f.nf or f.end
    if s is not None and s.tuple is not None:
        return s.tuple.proto_name, s.tuple.dst, s.tuple.dport
    return f.snapshot.target.proto, f.dest[0], f.dest[1]


# --- the causes ---------------------------------------------------------------------------------------

FORWARD_DROP_FUNCS = {4: "ip_error", 6: "ip6_forward"}   # where each family drops what it may not forward


def match_forwarding_off(f: Facts) -> Optional[Match]:
    if f.family == 6:
        return _forwarding6_off(f)
    v = f.ns.sysctls
    on = sysctl.forwarding_on(v, f.ingress or None)
    lookup = f.ns.lookup(f.dest[0]) if f.dest[0] else None
    lookup_unreach = lookup is not None and lookup.err == errno.EHOSTUNREACH
    if f.seen:
        if f.journey.outcome in ("delivered", "sent") or (f.drop and f.func != "ip_error"):
            return None     # delivered, forwarded, or dropped by something else: forwarding was not in the way
        routed_error = f.func == "ip_error" or (f.route and f.route.route and f.route.route.err)
        if not (routed_error or lookup_unreach):
            return None
    elif not (f.service_addr and not f.ns.has_address(f.service_addr)):
        return None         # evidence only: matters only when the target must be forwarded
    if on is not False and not lookup_unreach:
        return None
    s = _Score()
    s.add(3, f.func == "ip_error", f.drop_line())
    s.add(2, f.reason == "IP_INADDRERRORS")
    keys = sysctl.forwarding(v, f.ingress or None)
    off = [k for k, val in keys.items() if val == 0]
    s.add(3, bool(off), "; ".join("%s = 0" % k for k in off))
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and (r.local is False or (r.oif and r.oif != "lo")),
          "route %s -> dev %s (must be forwarded)" % (r.dst or f.dest[0], r.oif) if r else "")
    s.add(1, lookup_unreach, str(lookup) if lookup else "")
    glob = sysctl.as_int(v, "net.ipv4.ip_forward") == 0 or sysctl.as_int(v, sysctl.conf_key("all", "forwarding")) == 0
    key = "net.ipv4.ip_forward" if glob or not f.ingress else sysctl.conf_key(f.ingress, "forwarding")
    where = "on this host" if glob else "on %s" % f.ingress
    dest = "%s:%d" % f.dest if f.dest[0] else "its destination"
    return Match(s, "IPv4 forwarding is off %s, so a packet arriving there for %s (not an address of this "
                    "namespace, it must be forwarded) gets an unreachable route and is dropped by ip_error."
                 % (where, dest), [f.ns.prefix() + "sysctl -w %s=1" % key], PERSIST)


def _forwarding6_off(f: Facts) -> Optional[Match]:
    """IPv6: the route lookup succeeds whatever forwarding says (the route to the bridge is there); the
    packet reaches ip6_forward, which refuses it while net.ipv6.conf.all.forwarding is 0 and counts it
    as an address error (IP_INADDRERRORS)."""
    v = f.ns.sysctls
    if f.seen and (f.journey.outcome in ("delivered", "sent") or (f.drop and f.func != "ip6_forward")):
        return None
    if not f.seen and not (f.service_addr and not f.ns.has_address(f.service_addr)):
        return None
    if sysctl.forwarding_on(v, f.ingress or None, 6) is not False:
        return None
    s = _Score()
    s.add(3, f.func == "ip6_forward", f.drop_line())
    s.add(2, f.reason == "IP_INADDRERRORS")
    off = [k for k, val in sysctl.forwarding(v, f.ingress or None, 6).items() if val == 0]
    s.add(3, bool(off), "; ".join("%s = 0" % k for k in off))
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and not r.err and (r.local is False or (r.oif and r.oif != "lo")),
          "route %s -> dev %s (must be forwarded)" % (r.dst or f.dest[0], r.oif) if r else "")
    v4 = sysctl.forwarding_on(v, f.ingress or None, 4)    # other_family_line says what IPv4 clients meet
    dest = model.hostport(*f.dest) if f.dest[0] else "its destination"
    return Match(s, "IPv6 forwarding is off on this host (net.ipv6.conf.all.forwarding = 0%s), so an IPv6 packet "
                    "arriving there for %s (not an address of this namespace, it must be forwarded) is routed, then "
                    "refused and dropped by ip6_forward."
                 % ("; IPv4 forwarding is on" if v4 else "", dest),
                 [f.ns.prefix() + "sysctl -w net.ipv6.conf.all.forwarding=1"],
                 PERSIST + "; on a host that takes its IPv6 address from router advertisements, set "
                 "net.ipv6.conf.<uplink>.accept_ra=2 first, or forwarding turns RA off")


def match_no_route(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    r = f.route.route if f.route and f.route.route else None
    route_err = bool(r and r.err)
    if not (f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES") or route_err):
        return None
    if sysctl.forwarding_on(f.ns.sysctls, f.ingress or None, f.family) is False:
        return None         # that is forwarding-off
    s = _Score()
    s.add(2, _down_link_for(f) is None)     # a link that is down explains the missing route better
    s.add(2, f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"), f.drop_line())
    s.add(2, f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"))
    s.add(2, route_err, "route lookup for %s failed: %s" % (r.dst, errno.errorcode.get(-r.err, r.err)) if r else "")
    lookup = f.ns.lookup(f.dest[0]) if f.dest[0] else None
    s.add(1, lookup is not None and lookup.err, str(lookup) if lookup else "")
    s.note(_kv(f.ns.sysctls, sysctl.conf_key(f.ingress or "all", "forwarding")))
    return Match(s, "The kernel has no usable route for %s in %s: the packet cannot be delivered or forwarded. "
                    "Add a route to it (or fix the NAT target)." % (f.dest[0] or "the destination", f.ns.name))


def _filter_match(f: Facts, hook: str) -> Optional[Match]:
    if not f.seen:
        moves = _drop_moves(f, hook)
        if not moves:
            return None
        s = _Score()
        s.add(1, True, "%s (counter moved during the capture)" % moves[0])
        return _filter_result(f, s, hook, moves[0])
    if f.hook != hook or not (f.netfilter_drop or f.stopped_in_hook):
        return None
    s = _Score()
    # the hook may be known from nf_hook_slow's verdict alone (no netfilter-hook step in the journey)
    s.add(3, True, "last netfilter hook reached: %s in %s" % (
        "%s/%s" % (f.nf.hook, f.nf.stage) if f.nf and f.nf.hook == hook else "%s (its verdict)" % hook, f.ns.name))
    s.add(2, f.netfilter_drop, f.drop_line())
    moves = _drop_moves(f, hook)
    s.add(3, bool(moves), "%s (counter moved during the capture)" % moves[0] if moves else "")
    policy = f.rules.chain("filter", hook) if f.rules else None
    if not moves and policy is not None:
        s.add(1, policy.policy == "DROP", "filter %s policy DROP" % hook)
    return _filter_result(f, s, hook, moves[0] if moves else None)


def _filter_result(f: Facts, s: _Score, hook: str, move: Optional[CounterMove]) -> Match:
    proto, dst, dport = _packet(f)
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
                 fix, note, move)


def match_filter_forward_drop(f: Facts) -> Optional[Match]:
    m = _filter_match(f, "FORWARD")
    if m and f.seen and _is_bridged(f) and sysctl.as_int(f.ns.sysctls, f.br_nf_key) == 1:
        m.score.add(2, False)   # bridged traffic in FORWARD: br-netfilter explains it better
    if m and f.seen and _foreign_drop_chains(f):
        m.score.add(2, False)   # another nft table's chain on the hook drops: foreign-nft-drop names it
    return m


def match_filter_input_drop(f: Facts) -> Optional[Match]:
    return _filter_match(f, "INPUT")


def match_no_listener(f: Facts) -> Optional[Match]:
    refused = f.conn is not None and f.conn.outcome == "refused"
    no_socket = f.reason == "NO_SOCKET"
    if f.seen and not (refused or no_socket):
        return None
    if f.journey is not None and f.journey.direction == "reply":
        return None     # a reply the client has no socket for: the service did answer
    ns = f.ns
    if refused and not no_socket and f.conn.replies:
        ns = f.snapshot.by_inode(f.conn.replies[0].first.netns)
    port = f.dest[1] if f.seen else f.snapshot.target.service_port
    if not f.seen and (f.snapshot.container is None or ns is not f.snapshot.container):
        ns = f.snapshot.container
        if ns is None:
            return None
    listening = [l for l in ns.listeners if l.port == port]
    usable = [l for l in listening if l.accepts(f.dest[0]) or not f.dest[0]]
    if not f.seen and usable:
        return None
    s = _Score()
    if f.seen:
        s.add(3, True, f.drop_line() if no_socket else "the reply was a RST (connection refused)")
        s.add(3, not _not_dnated(f))    # a published port that missed its DNAT: not-dnated / stale conntrack
    s.add(3, not usable, "nothing listens on %s port %d in %s%s" % (
        f.snapshot.target.proto, port, ns.name,
        " (only on %s)" % ", ".join(str(l) for l in listening) if listening else ""))
    loop = [l for l in listening if l.loopback_only]
    hint = " It listens only on %s, which a forwarded packet cannot reach; bind it to 0.0.0.0." % loop[0] \
        if loop and not usable else ""
    return Match(s, "The packet reached %s, but no socket listens on port %d there, so the kernel answers "
                    "with a RST. Start the service (or publish the port it really listens on).%s"
                 % (ns.name, port, hint))


def match_neigh_failed(f: Facts) -> Optional[Match]:
    nb = f.ns.neighbour(f.dest[0]) if f.dest[0] else None
    failed = nb is not None and any(st in nb["state"] for st in ("FAILED", "INCOMPLETE"))
    reason = f.neighbour_failed
    stalled = f.seen and f.drop is None and f.journey.outcome == "unfinished" and f.route is not None
    if not (reason or (failed and (stalled or not f.seen))):
        return None
    s = _Score()
    s.add(3, reason, f.drop_line())
    s.add(2, failed, "neighbour %s on %s: %s" % (nb["addr"], nb["dev"], nb["state"]) if nb else "")
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and r.oif, "route %s -> dev %s" % (f.dest[0], r.oif) if r else "")
    if f.seen and (f.journey.direction == "reply" or _down_bridge_ports(f)):
        s.add(2, False)     # a reply (reply-policy-route), or a bridge port down (bridge-port-down)
    t = f.snapshot.target
    if t.dnat_rule:
        s.note("DNAT rule: %s" % t.dnat_rule)
    return Match(s, "Nothing at %s answers ARP%s: the address the packet is sent to (the DNAT target) is "
                    "wrong or its container is down. Check the container's address (docker inspect) and "
                    "the DNAT rule." % (f.dest[0] or "the next hop", " on %s" % r.oif if r and r.oif else ""))


def match_conntrack_full(f: Facts) -> Optional[Match]:
    full_ns = next((e for e in [f.ns] + f.snapshot.namespaces() if ct_stats.is_full(e.conntrack)), None)
    moved = {k: v for d in (f.delta.namespaces if f.delta else []) for k, v in d.conntrack.items()
             if k in ("drop", "early_drop", "insert_failed")}
    if not (full_ns or moved):
        return None
    if f.seen and f.drop and not (f.func == "nf_hook_slow" or f.netfilter_drop):
        return None
    s = _Score()
    st = (full_ns or f.ns).conntrack
    s.add(3, full_ns is not None, "nf_conntrack_count = %s, nf_conntrack_max = %s" % (st.get("count"), st.get("max")))
    s.add(2, bool(moved), "conntrack stats moved: %s" % ", ".join("%s +%d" % kv for kv in sorted(moved.items())))
    if f.seen:
        s.add(2, f.func == "nf_hook_slow", f.drop_line())
        s.add(1, f.hook in ("PREROUTING", "OUTPUT"))
    new_max = max(2 * int(st.get("max") or 65536), 131072)
    return Match(s, "The connection tracking table is full, so conntrack refuses new connections and "
                    "netfilter drops their first packets before any rule sees them.",
                 ["sysctl -w net.netfilter.nf_conntrack_max=%d" % new_max], PERSIST)


def match_rp_filter(f: Facts) -> Optional[Match]:
    if f.reason != "IP_RPFILTER":
        return None
    rp = sysctl.rp_filter(f.ns.sysctls, f.ingress or None)
    s = _Score()
    s.add(3, True, f.drop_line())
    s.add(2, rp["effective"] == 1, "rp_filter on %s: all = %s, %s = %s (effective %s, strict)" % (
        f.ingress or "?", rp["all"], f.ingress or "if", rp["if"], rp["effective"]))
    src = f.drop.tuple.src if f.drop and f.drop.tuple else "the source"
    iface = f.ingress or "all"
    return Match(s, "Strict reverse-path filtering on %s dropped the packet: the route back to %s does not "
                    "leave by %s. Use loose mode (2) or fix the routes." % (iface, src, iface),
                 [f.ns.prefix() + "sysctl -w %s=2" % sysctl.conf_key(iface, "rp_filter")],
                 "the cure is a route back to %s by %s; %s" % (src, iface, PERSIST), workaround=True)


MARTIAN_REASONS = ("IP_LOCAL_SOURCE", "IP_LOCALNET", "IP_INVALID_SOURCE", "IP_INVALID_DEST")


def match_martian_source(f: Facts) -> Optional[Match]:
    if f.reason not in MARTIAN_REASONS:
        return None
    v, iface = f.ns.sysctls, f.ingress or "all"
    s = _Score()
    s.add(3, True, f.drop_line())
    src = f.drop.tuple.src if f.drop and f.drop.tuple else ""
    fix, note = None, ""
    if f.reason == "IP_LOCALNET":
        key = sysctl.conf_key(iface, "route_localnet")
        s.add(2, sysctl.as_int(v, key) == 0, _kv(v, key))
        text = "a loopback (127.0.0.0/8) address arrived on %s, which the kernel refuses unless route_localnet " \
               "is set" % iface
        fix = [f.ns.prefix() + "sysctl -w %s=1" % key]
    elif f.reason == "IP_LOCAL_SOURCE":
        key = sysctl.conf_key(iface, "accept_local")
        s.add(2, f.ns.has_address(src) if src else False, "%s is an address of %s itself" % (src, f.ns.name))
        s.note(_kv(v, key))
        text = "the source address %s is one of this namespace's own addresses (a duplicate or spoofed " \
               "address)" % (src or "?")
        note = "better: give the client an address of its own; accepting it: sysctl -w %s=1" % key
    else:
        text = "the source or destination address is invalid (martian) on %s" % iface
    return Match(s, "The packet was dropped as a martian: %s." % text, fix, note)


def match_br_netfilter(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    on = sysctl.as_int(f.ns.sysctls, f.br_nf_key) == 1
    if not on or not _is_bridged(f) or not (f.hook == "FORWARD" and (f.netfilter_drop or f.stopped_in_hook)):
        return None
    s = _Score()
    s.add(3, True, "%s = 1" % f.br_nf_key)
    s.add(3, True, "bridged packet (no route decision; in/out are bridge ports) reached %s FORWARD" % f.tool)
    s.add(2, f.netfilter_drop, f.drop_line())
    moves = _drop_moves(f, "FORWARD")
    s.add(1, bool(moves), "%s (counter moved during the capture)" % moves[0] if moves else "")
    return Match(s, "br_netfilter sends traffic bridged between ports of one bridge through iptables, and the "
                    "FORWARD chain drops it; the packet never needed routing.",
                 [f.ns.prefix() + "sysctl -w %s=0" % f.br_nf_key],
                 "or keep br_netfilter and accept bridged traffic: " + f.tool + " -I FORWARD -m physdev "
                 "--physdev-is-bridged -j ACCEPT; " + PERSIST, moves[0] if moves else None, workaround=True)


def match_reply_no_route(f: Facts) -> Optional[Match]:
    if not f.seen or f.conn.answered:
        return None
    done = f.delivered_to_listener_ns()
    if done is None or any(j.outcome == "dropped" for j in f.conn.requests):
        return None
    ns = f.snapshot.by_inode(done.end_step.netns)
    d = f.delta.by_inode(ns.inode) if f.delta else None
    noroutes = (d.snmp.get("IpOutNoRoutes", 0) if d else 0)
    client = f.conn.key.src
    lookup = ns.lookup(client)
    s = _Score()
    s.add(3, True, "the request was delivered in %s, but no reply ever left" % ns.name)
    s.add(3, noroutes > 0, "IpOutNoRoutes +%d in %s" % (noroutes, ns.name))
    s.add(2, lookup is not None and lookup.err, str(lookup) if lookup else "")
    s.add(1, d is not None and d.snmp.get("TcpExtListenDrops", 0) > 0,
          "TcpExtListenDrops +%d" % (d.snmp.get("TcpExtListenDrops", 0) if d else 0))
    if s.got <= 3:
        return None     # delivered and silent, but nothing says "no route": not this cause
    s.note("routes in %s: %s" % (ns.name, "; ".join(ns.routes) or "none"))
    gw = _gateway_for(f.snapshot, ns)
    fix = [ns.prefix() + "ip route add default via %s" % gw] if gw else None
    return Match(s, "The service in %s got the request, but it has no route back to the client %s, so its "
                    "reply is never sent (no packet is dropped: the reply is never built)." % (ns.name, client),
                 fix)


def _gateway_for(snap: Snapshot, ns: NsEvidence) -> str:
    """The host's address on the subnet the namespace is attached to: its natural default gateway."""
    import ipaddress
    if ns is snap.host:
        return ""
    for own in (c for l in ns.links for c in l.addresses):
        net = ipaddress.ip_interface(own).network
        if net.prefixlen >= 31 or ipaddress.ip_interface(own).ip.is_loopback:
            continue
        for l in snap.host.links:
            for c in l.addresses:
                if ipaddress.ip_interface(c).ip in net:
                    return c.split("/")[0]
    return ""


# --- causes from researched user reports (lab scenarios in /work/notes/scenarios.md) ------------------

def _down_link_for(f: Facts):
    """An administratively down link whose own subnet holds the packet's destination: its connected
    route went away when it went down."""
    import ipaddress
    dst = f.dest[0]
    if not dst:
        return None
    for l in f.ns.links:
        if l.up:
            continue
        for cidr in l.addresses:
            if ipaddress.ip_address(dst) in ipaddress.ip_interface(cidr).network:
                return l
    return None


def match_link_down(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    r = f.route.route if f.route and f.route.route else None
    if not (f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES") or (r and r.err)):
        return None
    link = _down_link_for(f)
    if link is None:
        return None
    s = _Score()
    s.add(3, f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"), f.drop_line())
    s.add(3, True, "link %s (%s%s) is administratively DOWN; %s is in its subnet %s"
          % (link.name, link.kind or "device", ", state " + link.state if link.state else "", f.dest[0],
             ", ".join(link.addresses)))
    lookup = f.ns.lookup(f.dest[0])
    s.add(1, lookup is not None and lookup.err, str(lookup) if lookup else "")
    s.note(_kv(f.ns.sysctls, sysctl.conf_key(f.ingress or "all", "forwarding")))
    return Match(s, "%s is down in %s, so the route to its subnet (where %s lives) is gone: the packet gets no "
                    "route and the sender an ICMP unreachable. Bring the link up (Docker: restart the engine, "
                    "which recreates its bridge)." % (link.name, f.ns.name, f.dest[0]),
                 [f.ns.prefix() + "ip link set %s up" % link.name])


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
    s = _Score()
    if f.journey.direction == "reply":
        s.add(2, False)     # the requests pass, their replies are dropped: foreign-nft-reply-drop
    s.add(3, True, f.drop_line() + " on the %s hook" % f.hook)
    s.add(3, True, "nft table %s %s, base chain %s (hook %s, priority %s): policy %s%s" % (
        c["family"], c["table"], c["chain"], c["hook"], c["prio"], c["policy"],
        "; no rule in it accepts the packet" if not any(r["verdict"] == "ACCEPT" for r in c["rules"]) else ""))
    # iptables' own filter table did not drop it (no DROP counter moved; its ACCEPT may have counted it,
    # when its chain runs first)
    s.add(2, not _drop_moves(f, f.hook), "%s (counter moved during the capture: iptables accepted it)"
          % accepted[0] if accepted else "no DROP rule or policy counter of iptables' filter table moved")
    proto, dst, dport = _packet(f)
    nft = f.ns.prefix() + "nft insert rule %s %s %s " % (c["family"], c["table"], c["chain"])
    fix = [nft + "ct state established,related accept",
           nft + "%s daddr %s %s dport %d accept" % ("ip6" if f.family == 6 else "ip", dst, proto, dport)]
    return Match(s, "Another nft table than iptables' own, %s %s, has a base chain %s on the %s hook that drops the "
                    "packet for %s:%d. Every base chain on a hook runs, so Docker's ACCEPT in the iptables filter "
                    "table does not save it: that table must accept it too."
                 % (c["family"], c["table"], c["chain"], f.hook, dst, dport), fix,
                 "with firewalld: firewall-cmd --zone=trusted --add-interface=<bridge>; deleting the table "
                 "removes the user's firewall")


def _not_dnated(f: Facts) -> bool:
    """The packet went to the published port of a DNAT and arrived at the host itself undNATed."""
    t = f.snapshot.target
    if not (f.seen and (t.service_addr or t.backends) and f.ns is f.snapshot.host):
        return False
    if any(st.ct and st.ct.dnat for st in f.journey.steps):
        return False
    tuples = f.journey.tuples()
    return bool(tuples) and tuples[0].dport == t.port and f.ns.has_address(tuples[-1].dst)


def _dnat_rule_checks(f: Facts) -> tuple[list, list[str]]:
    """The DNAT rules for the packet's port, and why each one does not apply to this packet ([] if one does)."""
    rules = f.rules
    first = f.journey.steps[0]
    hook = "OUTPUT" if first.point == NF and first.hook == "OUTPUT" else "PREROUTING"
    tuples = f.journey.tuples()
    dst = tuples[0].dst if tuples else ""
    found = firewall.dnat_targets(rules, f.snapshot.target.port, f.snapshot.target.proto) if rules else []
    reach = rules.reachable("nat", hook) if rules else set()
    why = []
    for d in found:
        r = next((x for x in rules.chain("nat", d.chain).rules if x.text == d.rule), None)
        words = d.rule.split()
        problems = []
        if d.chain not in reach:
            problems.append("its chain %s is not reached from nat %s (where a %s packet is DNATed)"
                            % (d.chain, hook, "locally generated" if hook == "OUTPUT" else "arriving"))
        iif = r.option("-i") if r else None
        if iif and hook == "PREROUTING":
            neg = "!" in words[max(0, words.index("-i") - 1):words.index("-i")]
            if (f.ingress == iif) == neg:
                problems.append("it requires %s-i %s, the packet came in on %s" % ("! " if neg else "", iif, f.ingress))
        daddr = r.option("-d") if r else None
        if daddr and dst and daddr.split("/")[0] != dst and "!" not in words[max(0, words.index("-d") - 1):words.index("-d")]:
            problems.append("it requires -d %s, the packet was sent to %s" % (daddr, dst))
        if not problems:
            return found, []
        why.append("%s: %s" % (d.rule, "; ".join(problems)))
    return found, why


def match_not_dnated(f: Facts) -> Optional[Match]:
    if not _not_dnated(f) or not (f.reason == "NO_SOCKET" or f.conn.outcome == "refused"):
        return None
    found, why = _dnat_rule_checks(f)
    if not found or not why:
        return None         # no DNAT for the port, or one that applies (then conntrack is to blame)
    t = f.snapshot.target
    s = _Score()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    ct = next((st.ct for st in f.journey.steps if st.ct), None)
    s.add(2, True, "not DNATed: conntrack reply tuple %s:%d (the host itself, not %s:%d)"
          % (ct.reply.src, ct.reply.sport, f.service_addr, t.service_port) if ct and ct.reply else
          "no DNAT in the packet's journey")
    s.add(3, True, "; ".join(why))
    if _hairpin(f):
        s.add(2, False)     # from the bridge the DNAT excludes: no-hairpin-dnat names it
    fix = None
    rules = f.rules
    first = f.journey.steps[0]
    if first.point == NF and first.hook == "OUTPUT" and rules:
        chain = next(d.chain for d in firewall.dnat_targets(rules, t.port, t.proto))
        jump = next((r for r in (rules.chain("nat", "PREROUTING").rules if rules.chain("nat", "PREROUTING") else [])
                     if r.target == chain), None)
        if chain == "PREROUTING" or jump is None:
            src = next(d.rule for d in firewall.dnat_targets(rules, t.port, t.proto))
            text = " ".join(src.split()[2:])
        else:
            text = " ".join(jump.text.split()[2:])
            if "-d" not in text.split():
                text = "! -d 127.0.0.0/8 " + text
        fix = [f.ns.prefix() + "iptables -t nat -A OUTPUT " + text]
    fix = fix or _dnat_copy_fix(f)
    return Match(s, "The published port %s/%d reached %s, but no DNAT rule applied to the packet, so it went to "
                    "the host itself, where nothing listens: %s." % (t.proto, t.port, f.ns.name, "; ".join(why)),
                 fix, "" if fix else "recreate the publication for the address/interface the clients use")


def _other(family: int) -> int:
    return 4 if family == 6 else 6


def _global_address(ns: Optional[NsEvidence], family: int) -> str:
    """An address of this family on a namespace's links (not loopback, not link-local): where a
    container is reached over that family."""
    import ipaddress
    for l in (ns.links if ns else []):
        for c in l.addresses:
            ip = ipaddress.ip_interface(c).ip
            if ip.version == family and not (ip.is_loopback or ip.is_link_local):
                return str(ip)
    return ""


def match_family_not_published(f: Facts) -> Optional[Match]:
    """The port is DNATed for one IP family only (Docker before 27 publishes IPv4 only unless ip6tables
    is on; a hand-written rule set may cover one family): a client of the other family reaches the host
    itself, where nothing listens on the published port."""
    if not _not_dnated(f) or not (f.reason == "NO_SOCKET" or f.conn.outcome == "refused"):
        return None
    t, other = f.snapshot.target, _other(f.family)
    mine = firewall.dnat_targets(f.rules, t.port, t.proto) if f.rules else []
    theirs_rules = f.ns.ruleset(other)
    theirs = firewall.dnat_targets(theirs_rules, t.port, t.proto) if theirs_rules else []
    if mine or not theirs:
        return None         # a DNAT of this family that did not apply is not-dnated's; none at all: no-listener's
    other_tool = "ip6tables" if other == 6 else "iptables"
    s = _Score()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    s.add(3, True, "no %s DNAT rule for %s port %d in %s: the packet was not DNATed" % (f.tool, t.proto, t.port,
                                                                                         f.ns.name))
    s.add(3, True, "%s DNAT for it: %s" % (other_tool, theirs[0].rule))
    addr = _global_address(f.snapshot.container, f.family)
    fix, note = None, ("the container has no IPv%d address: enable IPv%d on its network first (docker network "
                       "create --ipv6 --subnet ...)" % (f.family, f.family))
    if addr:
        fix = [f.ns.prefix() + "%s -t nat -A PREROUTING -p %s --dport %d -m addrtype --dst-type LOCAL -j DNAT "
               "--to-destination %s" % (f.tool, t.proto, t.port, model.hostport(addr, theirs[0].target_port)),
               f.ns.prefix() + "%s -I FORWARD -d %s -p %s --dport %d -j ACCEPT" % (f.tool, addr, t.proto,
                                                                                  theirs[0].target_port)]
        s.note("the container has the IPv%d address %s" % (f.family, addr))
        note = "with Docker, let the engine write these: \"ip6tables\": true in /etc/docker/daemon.json " \
               "(with \"experimental\": true before 27) and IPv6 on the network"
    return Match(s, "Port %s/%d is published for IPv%d only: %s DNATs it to %s, but %s has no DNAT rule for it, so "
                    "this IPv%d client's packet reaches %s itself, where nothing listens on the port, and is refused. "
                    "IPv%d clients of the same port get through."
                 % (t.proto, t.port, other, other_tool, model.hostport(theirs[0].addr, theirs[0].target_port),
                    f.tool, f.family, f.ns.name, other), fix, note)


def other_family_line(f: Facts) -> str:
    """What the other IP family would meet on this host for the same port (its DNAT, forwarding and
    FORWARD policy), said when the port is published for that family too or the client used IPv6: a
    dual-stack client that fails on one family may work on the other. "" when there is nothing to say."""
    if not f.seen or f.ns is not f.snapshot.host:
        return ""
    t, other = f.snapshot.target, _other(f.family)
    rules = f.ns.ruleset(other)
    dnat = firewall.dnat_targets(rules, t.port, t.proto) if rules else []
    if not dnat and f.family == 4:
        return ""
    fwd = sysctl.forwarding_on(f.ns.sysctls, f.ingress or None, other)
    policy = rules.chain("filter", "FORWARD") if rules else None
    parts = ["DNAT to %s" % model.hostport(dnat[0].addr, dnat[0].target_port) if dnat else "no DNAT for the port",
             "forwarding %s" % {True: "on", False: "off", None: "unknown"}[fwd]]
    if policy is not None:
        parts.append("filter FORWARD policy %s" % policy.policy)
    verdict = ("the same port is published over IPv%d" % other if dnat and fwd
               else "IPv%d would not get through either" % other if dnat
               else "the port is not published over IPv%d" % other)
    return "IPv%d on %s: %s: %s" % (other, f.ns.name, "; ".join(parts), verdict)


def match_udp_stale_conntrack(f: Facts) -> Optional[Match]:
    if not _not_dnated(f) or f.reason != "NO_SOCKET":
        return None
    found, why = _dnat_rule_checks(f)
    if not found or why:
        return None         # the DNAT rule would not apply anyway: that is not-dnated
    t = f.snapshot.target
    tup = f.journey.tuples()[0]
    entries = [e for e in f.ns.ct_entries if "sport=%d" % tup.sport in e and "dport=%d" % t.port in e]
    dnat_moved = [m for m in f.moves() if m.table == "nat" and m.target == "DNAT"]
    s = _Score()
    s.add(3, True, f.drop_line())
    s.add(2, True, "a DNAT rule for %s/%d exists and matches the packet: %s" % (t.proto, t.port, found[0].rule))
    s.add(3, bool(entries), "conntrack: %s" % entries[0] if entries else "")
    s.add(1, not dnat_moved, "the DNAT rule's counter did not move (nat rules see only a flow's first packet)")
    return Match(s, "The flow's conntrack entry was made before the DNAT rule for %s/%d existed (or while it was "
                    "missing); NAT is bound to an entry only at its first packet, so every later packet of this "
                    "flow still goes to the host itself, where nothing listens. Delete the stale entry."
                 % (t.proto, t.port),
                 [f.ns.prefix() + "conntrack -D -p %s --orig-port-dst %d" % (t.proto, t.port)],
                 "Docker >= 23 flushes these entries when it publishes a UDP port")


def match_route_localnet(f: Facts) -> Optional[Match]:
    import ipaddress
    if not f.seen or f.func != "nf_hook_slow" or f.hook != "OUTPUT":
        return None
    tuples = f.journey.tuples()
    if not tuples or not ipaddress.ip_address(tuples[0].src).is_loopback:
        return None
    svc = f.service_addr
    dev = next((l for l in f.ns.links if svc and not ipaddress.ip_address(svc).is_loopback and any(
        ipaddress.ip_address(svc) in ipaddress.ip_interface(c).network for c in l.addresses)), None)
    if dev is None:
        return None
    key = sysctl.conf_key(dev.name, "route_localnet")
    off = sysctl.as_int(f.ns.sysctls, key) == 0
    s = _Score()
    s.add(3, True, f.drop_line() + " on the OUTPUT hook (locally generated)")
    s.add(2, True, "source %s is a loopback address; the DNAT target %s is reached by %s" % (tuples[0].src, svc, dev.name))
    s.add(3, off, _kv(f.ns.sysctls, key))
    s.add(1, not ct_stats.is_full(f.ns.conntrack), "conntrack is not full (count %s of %s)"
          % (f.ns.conntrack.get("count"), f.ns.conntrack.get("max")))
    fix = [f.ns.prefix() + "sysctl -w %s=1" % key]
    nat = f.rules.chain("nat", "POSTROUTING") if f.rules else None
    if nat is not None and not any("127.0.0.0/8" in r.text and r.target == "MASQUERADE" for r in nat.rules):
        fix.append(f.ns.prefix() + "iptables -t nat -I POSTROUTING -s 127.0.0.0/8 -o %s -j MASQUERADE" % dev.name)
    return Match(s, "A connection to %s:%d from the host was DNATed to %s, but after the DNAT the kernel must route "
                    "a packet with loopback source %s out of %s, which it refuses unless route_localnet is set there: "
                    "the NAT hook drops it." % (tuples[0].dst, tuples[0].dport, svc, tuples[0].src, dev.name),
                 fix, "the source must also be masqueraded (-s 127.0.0.0/8 -o %s -j MASQUERADE); the cure is to connect "
                 "to the host's own address instead of 127.0.0.1; %s" % (dev.name, PERSIST), workaround=True)


def _reply_source(f: Facts) -> Optional[tuple[str, int]]:
    """Where a dropped reply came from, when that is not what the client connected to (the reply was
    not un-NATed: the client's kernel has no socket for it and drops it, or answers with a RST)."""
    j, c = f.journey, f.conn
    if c is None or j is None or j.direction != "reply" or j.outcome != "dropped" or c.key is None:
        return None
    if f.drop is not None and f.drop.netns in {e.inode for e in f.snapshot.namespaces()}:
        return None     # dropped on the service's side, before its NAT would have been undone
    t = (f.drop.tuple if f.drop and f.drop.tuple else None) or (j.tuples()[-1] if j.tuples() else None)
    if t is None or (t.src, t.sport) == (c.key.dst, c.key.dport):
        return None
    return t.src, t.sport


def _notrack_moves(f: Facts) -> list[CounterMove]:
    """NOTRACK rules (raw table; iptables-nft shows them as CT --notrack) whose counters moved, in any
    namespace the capture read."""
    out = []
    for d in (f.delta.namespaces if f.delta else []):
        out += [m for m in d.moves if m.table == "raw" and (m.target in ("NOTRACK", "CT") or "notrack" in m.rule.lower())]
    return out


def _untracked_on_host(f: Facts) -> bool:
    """The reply crossed the host's hooks without a conntrack entry: seen at a hook's last position,
    where conntrack has run (at the first position of PREROUTING and OUTPUT it has not yet)."""
    host = f.snapshot.host.inode
    return any(s.point == NF and s.netns == host and s.stage == "last" and s.ct is None for s in f.journey.steps)


def match_reply_notrack(f: Facts) -> Optional[Match]:
    src = _reply_source(f)
    moves = _notrack_moves(f)
    if src is None or not (moves or _untracked_on_host(f)):
        return None
    s = _Score()
    s.add(3, True, "the reply reached the client from %s:%d, not from %s:%d that it connected to: its NAT was "
                   "not undone" % (src + (f.conn.key.dst, f.conn.key.dport)))
    s.add(3, bool(moves), "%s (counter moved during the capture)" % moves[0] if moves else "")
    s.add(2, _untracked_on_host(f), "the reply crossed %s's hooks without a conntrack entry" % f.snapshot.host.name)
    s.add(1, f.drop is not None, f.drop_line())
    host = f.snapshot.host
    fix = [firewall.fix_delete(moves[0], host.netns)] if moves else None
    return Match(s, "A NOTRACK rule in the raw table makes conntrack skip the container's replies, so the DNAT is "
                    "never undone on them: the client gets a SYN-ACK from %s:%d, which it never connected to, and "
                    "drops it (or resets it). Exempt the published service's traffic from the NOTRACK rule." % src,
                 fix, "or narrow the rule so it does not match traffic of DNATed connections", moves[0] if moves else None)


def match_reply_not_unnated(f: Facts) -> Optional[Match]:
    src = _reply_source(f)
    if src is None or _notrack_moves(f) or _untracked_on_host(f):
        return None
    s = _Score()
    s.add(3, True, "the reply reached the client from %s:%d, not from %s:%d that it connected to"
          % (src + (f.conn.key.dst, f.conn.key.dport)))
    s.add(1, f.drop is not None, f.drop_line())
    crossed = any(st.netns == f.snapshot.host.inode for st in f.journey.steps)
    s.add(2, not crossed, "" if crossed else "the reply did not pass through %s, where the DNAT was done"
          % f.snapshot.host.name)
    return Match(s, "The reply reached the client without its NAT undone (from %s:%d): it took a path that "
                    "avoids the host that did the DNAT, or conntrack there lost the entry. Route the replies "
                    "back through that host (or SNAT the requests so they must come back)." % src)


# --- more causes from researched reports: a fault after the handshake, reply paths, shared signatures ---

def _host_steps(f: Facts, j: Optional[Journey], point: str) -> list[Step]:
    host = f.snapshot.host.inode
    return [s for s in (j.steps if j else []) if s.point == point and s.netns == host]


def _icmp_drop_moves(f: Facts) -> list[CounterMove]:
    """DROP/REJECT rules of the filter table that match ICMP and counted packets during the capture."""
    return [m for m in f.moves() if m.table in ("filter", "ip filter") and m.target in DROP_TARGETS
            and not m.policy and "icmp" in m.rule.lower()]


def match_pmtu_blackhole(f: Facts) -> Optional[Match]:
    if not f.seen or f.reason != "PKT_TOO_BIG":
        return None
    dst = f.drop.tuple.dst if f.drop.tuple else ""
    out = next((s for s in _host_steps(f, f.journey, ROUTE) if s.route and s.route.oif
                and (s.route.dst == dst or not dst)), None)     # not the ICMP error's own lookup
    oif = f.ns.link(out.route.oif) if out else None
    inl = f.ns.link(f.ingress) if f.ingress else None
    icmp = _icmp_drop_moves(f)
    fails = f.nsdelta.snmp.get("IpFragFails", 0) if f.nsdelta else 0
    s = _Score()
    s.add(3, True, f.drop_line())
    s.add(2, f.conn is not None and f.conn.outcome == "stalled", "the handshake completed; the first data packet "
          "of the reply was dropped (the connection stalls after it is established)")
    smaller = oif is not None and oif.mtu and (inl is None or not inl.mtu or oif.mtu < inl.mtu)
    s.add(2, smaller, "MTU: %s %s, %s %s" % (f.ingress or "?", inl.mtu if inl else "?", oif.name, oif.mtu) if oif else "")
    s.add(3, bool(icmp), "%s (counter moved: the ICMP \"fragmentation needed\" that would tell the sender "
                         "to send smaller packets is dropped)" % icmp[0] if icmp else "")
    s.add(1, fails > 0, "IpFragFails +%d in %s" % (fails, f.ns.name))
    clamp = f.ns.prefix() + "iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    if icmp:
        fix = [f.ns.prefix() + "iptables -I %s -p icmp --icmp-type fragmentation-needed -j ACCEPT" % icmp[0].chain]
        note = "or, a workaround where ICMP cannot be let through: " + clamp
    else:
        fix, note = [clamp], "a workaround (cure: let ICMP type 3 code 4 through wherever it is dropped)"
    return Match(s, "A path MTU black hole: packets of %d+ bytes must leave %s by %s (MTU %s) and cannot be "
                    "fragmented, so the kernel drops them and answers with ICMP \"fragmentation needed\"%s. The "
                    "handshake and small packets pass; the large data never arrives."
                 % ((oif.mtu + 1) if oif and oif.mtu else 0, f.ns.name, oif.name if oif else "?",
                    oif.mtu if oif else "?", ", which is dropped" if icmp else ", which does not reach the sender"),
                 fix, note, icmp[0] if icmp else None)


def _rule_for_table(f: Facts, table: int) -> Optional[tuple[int, str]]:
    """The policy routing rule (pref, text) that sends lookups to `table`."""
    for line in f.ns.ip_rules:
        pref, _, text = line.partition(":")
        words = text.split()
        if "lookup" in words and words[words.index("lookup") + 1:][:1] == [str(table)] and pref.strip().isdigit():
            return int(pref), text.strip()
    return None


def match_reply_policy_route(f: Facts) -> Optional[Match]:
    j = f.journey
    if not f.seen or j.direction != "reply" or f.drop is None or f.conn is None:
        return None
    rt = next((s for s in reversed(_host_steps(f, j, ROUTE)) if s.route and s.route.oif and not s.route.err
               and not s.route.reverse and s.route.dst == f.conn.key.src), None)
    req_rx = next((s for r in f.conn.requests for s in _host_steps(f, r, RX)), None)
    orig = next((s.ct.orig for s in j.steps if s.ct and s.ct.orig), None)
    # where the request came in; when only the reply was seen (a SYN-ACK retransmitted for an attempt made
    # before the capture), the link that holds the address the client connected to
    req_if = req_rx.ifname if req_rx else next(
        (l.name for l in f.ns.links if orig and any(c.split("/")[0] == orig.dst for c in l.addresses)), "")
    if rt is None or not req_if or rt.route.oif == req_if or rt.route.table in (254, 255):
        return None         # the reply leaves where the request came in, or by the main table
    rule = _rule_for_table(f, rt.route.table)
    client = orig.src if orig else f.conn.key.src
    s = _Score()
    s.add(3, True, f.drop_line())
    s.add(3, True, "the request came in on %s; its reply was routed by table %d to %s%s"
          % (req_if, rt.route.table, rt.route.oif, " via %s" % rt.route.gateway if rt.route.gateway else ""))
    s.add(2, rule is not None, "ip rule %d: %s" % rule if rule else "")
    s.note("routes in %s (main): %s" % (f.ns.name, "; ".join(f.ns.routes)))
    fix = None
    if rule is not None:
        inl = f.ns.link(req_if)
        import ipaddress
        net = next((str(ipaddress.ip_interface(c).network) for c in (inl.addresses if inl else [])
                    if ipaddress.ip_address(client) in ipaddress.ip_interface(c).network), client + "/32")
        fix = [f.ns.prefix() + "ip rule add iif %s to %s lookup main pref %d"
               % (f.ingress or rt.ifname, net, max(1, rule[0] - 1))]
    return Match(s, "Policy routing sends the reply out of %s (table %d), not back out of %s where the request came "
                    "in: the reply to %s takes another uplink and dies there. Route the replies of inbound "
                    "connections back the way they came." % (rt.route.oif, rt.route.table, req_if, client),
                 fix, "better for every client: mark inbound connections and route their replies by the mark "
                      "(iptables -t mangle ... CONNMARK --set-mark / --restore-mark; ip rule add fwmark 1 lookup main)")


def _down_bridge_ports(f: Facts) -> list:
    """Ports (members) of the bridge the packet was routed to that are administratively down."""
    r = f.route.route if f.route and f.route.route else None
    br = f.ns.link(r.oif) if r and r.oif else None
    if br is None or br.kind != "bridge":
        return []
    return [l for l in f.ns.links if l.master == br.name and not l.up]


def match_bridge_port_down(f: Facts) -> Optional[Match]:
    if not f.seen or f.journey.direction != "request" or not f.neighbour_failed:
        return None
    down = _down_bridge_ports(f)
    if not down:
        return None
    br = f.ns.link(f.route.route.oif)
    ports = [l for l in f.ns.links if l.master == br.name]
    s = _Score()
    s.add(3, True, f.drop_line())
    s.add(3, True, "bridge %s: port%s %s administratively DOWN (%d of %d ports up)"
          % (br.name, "s" if len(down) > 1 else "", ", ".join(l.name for l in down), len(ports) - len(down), len(ports)))
    nb = f.ns.neighbour(f.dest[0]) if f.dest[0] else None
    s.add(1, nb is not None and any(x in nb["state"] for x in ("FAILED", "INCOMPLETE")),
          "neighbour %s on %s: %s" % (nb["addr"], nb["dev"], nb["state"]) if nb else "")
    return Match(s, "The container's port on bridge %s is down (%s), so ARP for %s is never answered: the address "
                    "is right, the link to it is not. Bring the port up (Docker: restart the container)."
                 % (br.name, ", ".join(l.name for l in down), f.dest[0]),
                 [f.ns.prefix() + "ip link set %s up" % l.name for l in down])


def _hairpin(f: Facts) -> Optional[tuple]:
    """The packet came from a bridge (a container calling its host's published address) and the DNAT
    rule for the port excludes that bridge: (bridge link, DnatTarget)."""
    import ipaddress
    if not _not_dnated(f) or not f.ingress:
        return None
    br = f.ns.link(f.ingress)
    if br is None or br.kind != "bridge" or not f.rules:
        return None
    for d in firewall.dnat_targets(f.rules, f.snapshot.target.port, f.snapshot.target.proto):
        words = d.rule.split()
        if "-i" in words and words[words.index("-i") + 1] == br.name and words[words.index("-i") - 1] == "!":
            if d.addr and any(ipaddress.ip_address(d.addr) in ipaddress.ip_interface(c).network for c in br.addresses):
                return br, d
    return None


def match_no_hairpin_dnat(f: Facts) -> Optional[Match]:
    if not (f.reason == "NO_SOCKET" or (f.conn is not None and f.conn.outcome == "refused")):
        return None
    h = _hairpin(f)
    if h is None:
        return None
    br, d = h
    t = f.snapshot.target
    src = f.journey.tuples()[0].src
    ret = [m for m in f.moves() if m.table == "nat" and m.target == "RETURN" and "-i %s" % br.name in m.rule]
    listen = [l for l in f.ns.listeners if l.port == t.port]
    s = _Score()
    s.add(3, True, f.drop_line() or "the host itself refused the connection")
    s.add(3, True, "the packet came in on %s (from %s, a container on it); the DNAT rule excludes it: %s"
          % (br.name, src, d.rule))
    s.add(1, bool(ret), "%s (counter moved: traffic from the bridge leaves the DNAT chain)" % ret[0] if ret else "")
    s.add(2, not listen, "nothing listens on %s port %d in %s (no userland proxy to take the connection)"
          % (t.proto, t.port, f.ns.name))
    rule = " ".join(w for w in d.rule.split()[2:])
    rule = rule.replace("! -i %s" % br.name, "-i %s" % br.name)
    fix = [f.ns.prefix() + "iptables -t nat -I %s 1 %s" % (d.chain, rule)]
    return Match(s, "A container on %s connects to the host's published port %s/%d. Docker's DNAT rule skips traffic "
                    "from the bridge (`! -i %s`) because its userland proxy, listening on the port, is meant to take "
                    "those connections, but no proxy listens here, so the host itself refuses them. Add the hairpin "
                    "DNAT for traffic from the bridge." % (br.name, t.proto, t.port, br.name), fix,
                 "or run Docker's userland proxy (\"userland-proxy\": true, the default); Docker with "
                 "userland-proxy=false writes this hairpin DNAT itself")


def _dnat_copy_fix(f: Facts) -> Optional[list[str]]:
    """not-dnated, for a packet arriving from outside: insert a copy of the DNAT rule restricted to what
    the packet really had (its input interface, its destination address) instead of what it did not match."""
    rules = f.rules
    tuples = f.journey.tuples()
    if not rules or not tuples or not f.ingress:
        return None
    for d in firewall.dnat_targets(rules, f.snapshot.target.port, f.snapshot.target.proto):
        words = d.rule.split()[2:]
        out, i, changed = [], 0, False
        while i < len(words):
            neg = words[i] == "!" and i + 1 < len(words)
            opt = words[i + 1] if neg else words[i]
            if opt in ("-i", "-d") and i + (2 if neg else 1) < len(words):
                val = words[i + (2 if neg else 1)]
                want = f.ingress if opt == "-i" else tuples[0].dst
                ok = (val == want or val.split("/")[0] == want) != neg
                out += ([opt, want] if not ok else words[i:i + (3 if neg else 2)])
                changed |= not ok
                i += 3 if neg else 2
                continue
            out.append(words[i])
            i += 1
        if changed:
            return [f.ns.prefix() + "iptables -t nat -I %s 1 %s" % (d.chain, " ".join(out))]
    return None


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
    s = _Score()
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
                 [nft + "ct state established,related accept"])


CATALOGUE: tuple[Cause, ...] = (
    Cause("forwarding-off", "IP forwarding is off (for the packet's family)", match_forwarding_off),
    Cause("filter-forward-drop", "A firewall rule or policy in FORWARD drops it", match_filter_forward_drop),
    Cause("filter-input-drop", "A firewall rule or policy in INPUT drops it", match_filter_input_drop),
    Cause("no-listener", "Nothing listens on the target port", match_no_listener),
    Cause("no-route", "No route can deliver or forward it", match_no_route),
    Cause("neigh-failed", "The next hop does not answer ARP", match_neigh_failed),
    Cause("conntrack-full", "The conntrack table is full", match_conntrack_full),
    Cause("rp-filter", "Reverse-path filtering drops it", match_rp_filter),
    Cause("martian-source", "Martian or local source address", match_martian_source),
    Cause("br-netfilter", "Bridged traffic filtered by iptables (br_netfilter)", match_br_netfilter),
    Cause("reply-no-route", "The reply cannot be routed back", match_reply_no_route),
    Cause("link-down", "The interface towards the destination is down", match_link_down),
    Cause("foreign-nft-drop", "Another nft table's base chain drops it", match_foreign_nft_drop),
    Cause("not-dnated", "No DNAT rule applied to the published port", match_not_dnated),
    Cause("family-not-published", "The port is published for the other IP family only", match_family_not_published),
    Cause("udp-stale-conntrack", "A conntrack entry older than the DNAT rule", match_udp_stale_conntrack),
    Cause("route-localnet", "Loopback source routed out after DNAT (route_localnet)", match_route_localnet),
    Cause("reply-notrack", "The reply bypasses conntrack (NOTRACK), so it is not un-NATed", match_reply_notrack),
    Cause("reply-not-unnated", "The reply reaches the client without its NAT undone", match_reply_not_unnated),
    Cause("pmtu-blackhole", "Path MTU black hole: large packets dropped, ICMP filtered", match_pmtu_blackhole),
    Cause("reply-policy-route", "Policy routing sends the reply out of another uplink", match_reply_policy_route),
    Cause("bridge-port-down", "The container's bridge port is down", match_bridge_port_down),
    Cause("no-hairpin-dnat", "A container calls the published port; the DNAT excludes its bridge",
          match_no_hairpin_dnat),
    Cause("foreign-nft-reply-drop", "Another nft table drops the replies (no established accept)",
          match_foreign_nft_reply_drop),
)


def _findings_for(facts: Facts, cap: float = 1.0) -> list[Finding]:
    out = []
    for cause in CATALOGUE:
        m = cause.match(facts)
        if m is None or m.score.value <= 0:
            continue
        out.append(Finding(cause.id, cause.title, round(min(m.score.value, cap), 2), m.explanation,
                           [e for e in m.score.evidence if e], m.fix, m.fix_note, _rule_dict(m.rule),
                           facts.ns.name, workaround=m.workaround))
    return out


# --- never silent: what no cause explains, and what was ruled out -------------------------------------

UNEXPLAINED = "unexplained"
NOTHING_ARRIVED = "nothing-arrived"


def unexplained(f: Facts) -> Finding:
    """A failure that no cause in the catalogue explains: the kernel's own word, so the user still has
    where and why it was dropped (or where the packet was last seen)."""
    j = f.journey
    after = " (after %s)" % f.hook if f.hook else ""
    if f.drop:
        what = "dropped at %s reason %s in %s%s" % (f.drop.location or "?", f.reason or "?", f.ns.name, after)
    elif f.conn is not None and f.conn.outcome in ("no-reply", "unfinished") and f.delivered_to_listener_ns():
        what = "the request was delivered in %s, but no reply was seen leaving" % f.ns.name
    elif j is not None and f.end is not None:
        what = "last seen at %s in %s%s (%s), then nothing" % (f.end.point, f.ns.name, after, j.outcome)
    else:
        what = "no packet was followed far enough to say where it stopped"
    evidence = [f.drop_line()] if f.drop else []
    evidence += ["%s: %s" % (e.name, err) for e in f.snapshot.namespaces() for err in e.errors]
    return Finding(UNEXPLAINED, "No cause in the catalogue explains it", 0.0, "Unexplained: %s." % what,
                   [e for e in evidence if e], netns=f.ns.name)


def nothing_arrived(snapshot: Snapshot) -> Finding:
    """No packet for the port reached the host: a fault too, with what was checked on this host."""
    t, host = snapshot.target, snapshot.host
    ev = ["no packet for %s port %d was seen on any interface of %s" % (t.proto, t.port, host.name)]
    ev += ["listening on port %d in %s: %s" % (t.port, host.name, ", ".join(str(l) for l in host.listeners
                                                                             if l.port == t.port) or "nothing")]
    if t.dnat_rule:
        ev.append("DNAT rule: %s" % t.dnat_rule)
    addrs = [c for l in host.links for c in l.addresses if not c.startswith("127.")]
    ev.append("addresses of %s: %s" % (host.name, ", ".join(addrs) or "none read"))
    return Finding(NOTHING_ARRIVED, "Nothing arrived", 0.0,
                   "Nothing arrived: no packet for this port reached this host while watching, so the fault is "
                   "before this host (the client, the network, a firewall or security group on the way), or "
                   "the clients use another address or port than the one published here.", ev, netns=host.name)


def _refuted(f: Facts) -> dict[str, str]:
    """For the causes the evidence refutes, why (cause id -> one line). Only checks that were made."""
    out = {}
    v = f.ns.sysctls
    if sysctl.forwarding_on(v, f.ingress or None, f.family):
        keys = sysctl.forwarding(v, f.ingress or None, f.family)
        out["forwarding-off"] = "forwarding is on: " + "; ".join("%s = %s" % kv for kv in keys.items() if kv[1] is not None)
    for hook, cid in (("FORWARD", "filter-forward-drop"), ("INPUT", "filter-input-drop")):
        if f.delta is not None and f.rules is not None and not _drop_moves(f, hook):
            out[cid] = "no DROP rule or policy counter of %s' filter table's %s path moved in %s" % (
                f.tool, hook, f.ns.name)
    port, addr = f.dest[1], f.dest[0]
    for ns in [e for e in (f.snapshot.container, f.ns) if e is not None]:
        ls = [l for l in ns.listeners if l.port == port and (not addr or l.accepts(addr))]
        if ls:
            out["no-listener"] = "%s listens in %s" % (ls[0], ns.name)
            break
    st = f.ns.conntrack
    if st.get("max") and not ct_stats.is_full(st):
        out["conntrack-full"] = "conntrack holds %s of %s entries in %s" % (st.get("count"), st.get("max"), f.ns.name)
    rp = sysctl.rp_filter(v, f.ingress or None)
    if f.family == 4 and rp.get("effective") is not None and rp["effective"] != 1:    # IPv6 has no rp_filter
        out["rp-filter"] = "rp_filter is not strict on %s (effective %s)" % (f.ingress or "all", rp["effective"])
    lookup = f.ns.lookup(addr) if addr else None
    if lookup is not None and not lookup.err:
        out["no-route"] = "the route lookup for %s succeeds in %s (%s)" % (addr, f.ns.name, lookup)
    nb = f.ns.neighbour(addr) if addr else None
    if nb is not None and not any(st_ in nb["state"] for st_ in ("FAILED", "INCOMPLETE")):
        out["neigh-failed"] = "neighbour %s is %s" % (addr, nb["state"])
    if sysctl.as_int(v, f.br_nf_key) == 0:
        out["br-netfilter"] = "%s = 0 in %s" % (f.br_nf_key, f.ns.name)
    return out


def _with_ruled_out(findings: list[Finding], facts: Facts) -> list[Finding]:
    named = {x.cause_id for x in findings}
    lines = ["not %s: %s" % (cid, why) for cid, why in _refuted(facts).items() if cid not in named]
    for x in findings:
        x.ruled_out = lines
    return findings


def explain(connections: list[Connection], snapshot: Snapshot, delta: Optional[Delta] = None) -> list[Finding]:
    """Ranked findings for the failing connections (highest confidence first), each with the alternatives
    its checks ruled out; a failure no cause explains gives an "unexplained" finding with the kernel's word.
    Healthy connections give none; with no connection at all, "nothing arrived" and then what the evidence
    alone suggests (confidence at most 0.5)."""
    found: dict[str, Finding] = {}
    failures = [c for c in connections if failing(c)]
    if connections and not failures:
        return []
    groups = []
    for c in failures:
        facts = Facts(c, snapshot, delta)
        fs = _with_ruled_out(_findings_for(facts) or [unexplained(facts)], facts)
        other = other_family_line(facts)
        if other:
            fs[0].evidence.append(other)
        groups.append(fs)
    if not failures:     # nothing arrived: that is the finding; the host's own state may suggest why
        suspicions = _findings_for(Facts(None, snapshot, delta), EVIDENCE_ONLY_CAP)
        return [nothing_arrived(snapshot)] + sorted(suspicions, key=lambda x: -x.confidence)
    for fs in groups:
        for fnd in fs:
            old = found.get(fnd.cause_id)
            if old is None:
                found[fnd.cause_id] = fnd
            else:
                best = fnd if fnd.confidence > old.confidence else old
                best.connections = old.connections + 1
                found[fnd.cause_id] = best
    order = {c.id: i for i, c in enumerate(CATALOGUE)} | {UNEXPLAINED: len(CATALOGUE), NOTHING_ARRIVED: len(CATALOGUE) + 1}
    return sorted(found.values(), key=lambda x: (-x.confidence, -x.connections, order[x.cause_id]))
