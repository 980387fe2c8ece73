"""The facts a decision replay reads: the kernel's report on one failing connection (its representative
journey, the drop site and reason, the hook, the route step, the ingress interface) joined with the
evidence of the namespace where it ended (a Snapshot and its counter Delta).

Every family module reads only this; nothing here knows about any cause.
"""
from __future__ import annotations

import functools
from typing import Optional

from dnattrace import model
from dnattrace.model import NF, ROUTE, RX, VERDICT, Connection, Journey, Step
from dnattrace.evidence import attribution, sysctl
from dnattrace.evidence import firewall
from dnattrace.evidence.firewall import DROP_TARGETS, CounterMove
from dnattrace.evidence.snapshot import Delta, NsDelta, NsEvidence, Snapshot
from dnattrace.kernel.kallsyms import base_name
from dnattrace.kernel.reasons import meaning as reason_meaning


NETFILTER_FUNCS = ("nft_do_chain", "ipt_do_table", "nf_hook_slow")


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

    @functools.cached_property
    def verdict(self) -> Optional["attribution.RuleVerdict"]:
        """Which base chain (and rule) dropped the packet at the hook where it ended, from every table of
        every owner on that hook (evidence/attribution.py); None when it did not end in netfilter."""
        if not self.journey or not (self.netfilter_drop or self.stopped_in_hook):
            return None
        return attribution.attribute(self.journey, self.ns, self.nsdelta)

    def holder(self, addr: str):
        """(looked, evidence): whether the holder of addr was looked for on this host, and its namespace's
        evidence (None: no namespace on this host holds it)."""
        if addr in self.snapshot.holders:
            return True, self.snapshot.holders[addr]
        c = self.snapshot.container
        if c is not None and c.has_address(addr):
            return True, c
        return False, None

    def way_to(self, holder, addr: str):
        """The link of this namespace that leads to the holder of addr: its veth peer here, or the bridge
        that peer is a port of. None when the holder's link has no peer here."""
        mine = next((l for l in holder.links if any(c.split("/")[0] == addr for c in l.addresses)), None)
        peer = next((l for l in self.ns.links if mine and mine.peer and l.index == mine.peer), None)
        return self.ns.link(peer.master) if peer is not None and peer.master else peer

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
        fault, two sites, depending on which comes first for a given packet; or refused a place in the
        queue of packets waiting for that answer (NEIGH_QUEUEFULL, under load)."""
        return (self.reason in ("NEIGH_FAILED", "NEIGH_QUEUEFULL") or self.func == "neigh_invalidate"
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
    """Healthy = answered by something other than a RST, no request dropped after the answer, and, when
    the client sent data, some data came back: a handshake that works and a body that never arrives is a
    fault (the client's request stalls). diagnose asks this after waiting for the data reply. A connection
    some of whose events were lost ("incomplete") is neither: lost events never become a verdict."""
    if conn.outcome == "incomplete":
        return False        # events were lost: no verdict, neither a failure nor an answer
    return conn.outcome != "answered" or silent_after_data(conn)


def silent_after_data(conn: Connection) -> bool:
    """TCP: the client's data was delivered to a socket and no data came back (nothing dropped on the way
    was seen: the failure is somewhere no probe saw). Events lost meanwhile leave it undecided (False)."""
    sent = conn.data_requests
    return (bool(sent) and not conn.data_replies and any(j.outcome == "delivered" for j in sent)
            and not any(j.lost_events for j in conn.requests + conn.replies))


def kv(values: dict, key: str) -> str:
    return "%s = %s" % (key, values.get(key, "?"))


def drop_moves(f: Facts, hook: str) -> list[CounterMove]:
    """DROP/REJECT rules and DROP policies that moved, in chains a packet entering `hook` visits."""
    out = []
    rules = f.rules
    for table in ("filter", "ip filter"):
        chains = rules.reachable(table, hook) if rules else {hook}
        for m in f.moves():
            if m.table == table and m.chain in chains and m.target in DROP_TARGETS:
                out.append(m)
    return out


def packet(f: Facts) -> tuple[str, str, int]:
    """(proto name, destination address, destination port) of the packet where it was dropped."""
    s = f.drop or f.nf or f.end
    if s is not None and s.tuple is not None:
        return s.tuple.proto_name, s.tuple.dst, s.tuple.dport
    return f.snapshot.target.proto, f.dest[0], f.dest[1]


def host_steps(f: Facts, j: Optional[Journey], point: str) -> list[Step]:
    host = f.snapshot.host.inode
    return [s for s in (j.steps if j else []) if s.point == point and s.netns == host]


def other_family(family: int) -> int:
    return 4 if family == 6 else 6


def global_address(ns: Optional[NsEvidence], family: int) -> str:
    """An address of this family on a namespace's links (not loopback, not link-local): where a
    container is reached over that family."""
    import ipaddress
    for l in (ns.links if ns else []):
        for c in l.addresses:
            ip = ipaddress.ip_interface(c).ip
            if ip.version == family and not (ip.is_loopback or ip.is_link_local):
                return str(ip)
    return ""


def other_family_line(f: Facts) -> str:
    """What the other IP family would meet on this host for the same port (its DNAT, forwarding and
    FORWARD policy), said when the port is published for that family too or the client used IPv6: a
    dual-stack client that fails on one family may work on the other. "" when there is nothing to say."""
    if not f.seen or f.ns is not f.snapshot.host:
        return ""
    t, other = f.snapshot.target, other_family(f.family)
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

def not_dnated(f: Facts) -> bool:
    """The packet went to the published port of a DNAT and arrived at the host itself undNATed."""
    t = f.snapshot.target
    if not (f.seen and (t.service_addr or t.backends) and f.ns is f.snapshot.host):
        return False
    if any(st.ct and st.ct.dnat for st in f.journey.steps):
        return False
    tuples = f.journey.tuples()
    return bool(tuples) and tuples[0].dport == t.port and f.ns.has_address(tuples[-1].dst)
