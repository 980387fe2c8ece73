"""Queueing and below-IP decisions replayed (diagnose/queueing.py): packets too big, tc and XDP
programs, qdiscs.

On recorded journeys and evidence (shapes.py builds them the way watch and the snapshot do).
"""
import json  # noqa: F401

import pytest  # noqa: F401

from dnattrace.diagnose import engine
from dnattrace.model import (CONSUME, DROP, NF, ROUTE, RX, XMIT, Connection, CtInfo, Journey, RouteInfo, Step,
                             Tuple5, connection_from_dict, to_dict)
from dnattrace.evidence.firewall import CounterMove, parse_iptables_save
from dnattrace.evidence.links import Link, RouteResult
from dnattrace.evidence.snapshot import Delta, NsDelta, NsEvidence, Snapshot
from dnattrace.target import Endpoint, Target
from dnattrace.evidence.sockets import Listener


from unit.diagnose.shapes import *  # noqa: F401,F403
from unit.diagnose.shapes import (CLIENT, CONT, CT, FWD_ON, HOST, INNER, PUBLIC, RULES, T_IN, T_NAT, conn,  # noqa: F401
    container, delta, drop, forwarded, forwarding_off_conn, host, prerouting, s, snap, top, _failed_nb, _handshake, _neigh_conn)


def test_handshake_answered_then_data_reply_dropped_is_stalled():
    """A fault after the handshake (a path MTU black hole): the SYN-ACK got out, the first data packet of
    the reply was dropped: the connection does not work."""
    from dnattrace.model import Connection, Journey, Step, Tuple5
    key = Tuple5(6, "198.51.100.2", 40000, "198.51.100.1", 8080)
    back = Tuple5(6, "172.31.0.2", 80, "198.51.100.2", 40000)
    syn = Journey(1, [Step(1, "rx", tuple=key, tcp_flags="S"), Step(2, "consume", location="tcp_v4_rcv+0x1")])
    synack = Journey(2, [Step(3, "nf", hook="OUTPUT", stage="first", tuple=back, tcp_flags="SA"),
                         Step(4, "xmit", ifname="o", tuple=back, tcp_flags="SA")], direction="reply")
    data = Journey(3, [Step(5, "nf", hook="OUTPUT", stage="first", tuple=back, tcp_flags="A"),
                       Step(6, "drop", location="ip_forward+0x2c0", reason="PKT_TOO_BIG")], direction="reply")
    c = Connection(key, [syn], [synack, data])
    assert c.outcome == "stalled" and engine.failing(c)
    assert engine.representative(c) is data
    assert Connection(key, [syn], [synack]).outcome == "answered"
    udp = Tuple5(17, "198.51.100.2", 40000, "198.51.100.1", 5353)
    assert Connection(udp, [Journey(4, [Step(1, "rx", tuple=udp)])],
                      [Journey(5, [Step(2, "drop", tuple=udp.reversed())], direction="reply")]).outcome == "reply-dropped"


def test_a_packet_too_big_is_told_by_ipfragfails_where_the_kernel_gives_no_reason():
    """5.10: ip_forward drops for several reasons and reports none; the frag-needed drop counts
    IpFragFails, so that counter moving names it (inferred, and said so); without it, no guess."""
    from dnattrace.model import Journey
    back = Tuple5(6, INNER, 80, "198.51.100.2", 40000)
    def stalled():
        syn = Journey(1, [*prerouting(), *forwarded(), s(CONSUME, location="tcp_v4_rcv+0x1")])
        data = Journey(3, [s(NF, hook="PREROUTING", stage="first", tuple=back, tcp_flags="A", ifname="br0"),
                           drop("ip_forward+0x1b9", "", back)], direction="reply")
        synack = Journey(2, [s(XMIT, ifname="veth-ext", tuple=back, tcp_flags="SA")], direction="reply")
        return Connection(T_IN, [syn], [synack, data])
    links = [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"], mtu=1400),
             Link("br0", 3, "UP", True, "bridge", "", ["172.17.0.1/16"], mtu=1500)]
    c = stalled()
    f = top(engine.explain([c], snap(host(links=links)), delta(snmp={"IpFragFails": 2})))
    assert f.cause_id == "pmtu-blackhole" and any("(inferred" in e for e in f.evidence), f
    assert (c.replies[1].drop.reason, c.replies[1].drop.reason_inferred) == ("PKT_TOO_BIG", True)
    assert top(engine.explain([stalled()], snap(host(links=links)), delta())).cause_id == "unexplained"


def test_a_tc_program_that_drops_is_named_with_its_filter():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="S"),
             s(DROP, location="tcf_classify+0x1", reason="TC_INGRESS", ifname="veth-ext", tuple=T_IN))
    h = host(bpf_progs=[{"dev": "veth-ext", "hook": "tc-ingress", "id": 42, "name": "guard", "pref": 7},
                        {"dev": "br0", "hook": "tc-ingress", "id": 43, "name": "other", "pref": 1}])
    f = top(engine.explain([c], snap(h)))
    assert f.cause_id == "bpf-prog-drop" and f.fix == ["tc filter del dev veth-ext ingress pref 7"]
    assert "id 42" in f.object


def test_a_qdisc_whose_drop_counter_moved_is_named():
    c = conn(*prerouting(), *forwarded(), s(DROP, location="__dev_queue_xmit+0x1", reason="QDISC_DROP",
                                            ifname="br0", tuple=T_NAT))
    h = host(qdiscs=[{"dev": "br0", "kind": "tbf", "handle": "1:", "parent": "root", "drops": 9}])
    f = top(engine.explain([c], snap(h), delta(qdisc_drops={"br0 tbf 1:": 3})))
    assert f.cause_id == "qdisc-drop" and f.fix == ["tc qdisc del dev br0 root"]
    assert "drops +3" in " ".join(f.evidence)


def test_nothing_arrived_lists_the_xdp_programs_on_the_way_in():
    h = host(bpf_progs=[{"dev": "veth-ext", "hook": "xdp", "id": 9, "name": "fw", "mode": "driver"}])
    f = engine.explain([], snap(h))[0]
    assert f.cause_id == engine.NOTHING_ARRIVED
    assert "suspect: xdp program id 9 (fw) on veth-ext (driver)" in f.evidence
