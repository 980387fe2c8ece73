"""The engine (diagnose/engine.py): consistency, deferral, grouping and shares, what no cause explains,
and the whole conversation (a stall after the handshake).

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


def test_healthy_connection_gives_no_finding():
    steps = prerouting() + forwarded() + [s(XMIT, ifname="br0", tuple=T_NAT),
                                          s(RX, ifname="eth0", netns=CONT, tuple=T_NAT),
                                          s(CONSUME, netns=CONT, location="tcp_v4_rcv+0x3b")]
    c = conn(*steps, replies=[[s(RX, netns=CONT, tcp_flags="SA"), s(XMIT, ifname="veth-ext", tcp_flags="SA")]])
    found = engine.explain([c], snap())
    assert found == [] and engine.top_cause(found) == "none"


def test_evidence_alone_when_no_packet_was_seen():
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0"})
    found = engine.explain([], snap(host(off)))
    assert found[0].cause_id == engine.NOTHING_ARRIVED, "nothing arriving is a fault, said first"
    assert found[1].cause_id == "forwarding-off" and found[1].confidence <= engine.EVIDENCE_ONLY_CAP
    assert [f.cause_id for f in engine.explain([], snap())] == [engine.NOTHING_ARRIVED]


def test_a_drop_no_cause_explains_is_named_with_the_kernels_word():
    """Never silent: a followed packet dropped where no cause applies gives 'unexplained', with the drop
    site, reason, namespace and hook, not an empty list (which would mean healthy)."""
    steps = prerouting() + forwarded() + [drop("some_new_function+0x12", "SOME_REASON")]
    found = engine.explain([conn(*steps)], snap())
    assert [f.cause_id for f in found] == [engine.UNEXPLAINED]
    assert found[0].explanation == ("Unexplained: dropped at some_new_function+0x12 reason SOME_REASON in host "
                                    "(after FORWARD).")


def test_a_dropped_reply_is_a_failure_and_alternatives_are_ruled_out():
    """The verdict is about the client: a SYN-ACK dropped on its way back is no answer."""
    back = Tuple5(6, PUBLIC, 8080, CLIENT, 41822)
    delivered = prerouting() + forwarded() + [s(CONSUME, location="tcp_v4_rcv+0x1", tuple=T_NAT, netns=CONT)]
    reply = [s(XMIT, ifname="eth0", tuple=T_NAT.reverse() if hasattr(T_NAT, "reverse") else back, tcp_flags="SA",
               netns=CONT),
             s(DROP, location="mystery+0x1", reason="NOT_SPECIFIED", tuple=back, tcp_flags="SA")]
    c = conn(*delivered, replies=[reply])
    assert c.outcome == "reply-dropped" and engine.failing(c)
    found = engine.explain([c], snap(c=container()))
    assert found and found[0].cause_id == engine.UNEXPLAINED
    assert any(r.startswith("not forwarding-off: forwarding is on") for r in found[0].ruled_out), found[0].ruled_out


def test_recorded_json_round_trip_gives_the_same_finding():
    c = forwarding_off_conn()
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                          "net.ipv4.conf.veth-ext.forwarding": "0"})
    sn = snap(host(off), c=container(listeners=[Listener("tcp", "0.0.0.0", 80, 1)]))
    c2 = connection_from_dict(json.loads(json.dumps(to_dict(c))))
    sn2 = Snapshot.from_dict(json.loads(json.dumps(sn.to_dict())))
    a, b = engine.explain([c], sn), engine.explain([c2], sn2)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    assert a[0].cause_id == "forwarding-off"


def test_several_connections_are_merged_per_cause():
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                          "net.ipv4.conf.veth-ext.forwarding": "0"})
    found = engine.explain([forwarding_off_conn(), forwarding_off_conn()], snap(host(off)))
    assert found[0].cause_id == "forwarding-off" and found[0].connections == 2


@pytest.mark.parametrize("cause_id", [c.id for c in engine.CATALOGUE])
def test_every_cause_has_a_title_and_a_function(cause_id):
    cause = next(c for c in engine.CATALOGUE if c.id == cause_id)
    assert cause.title and callable(cause.match)


def test_a_reply_still_parked_when_watching_ends_is_no_answer():
    """A SYN-ACK routed out of an uplink whose neighbour does not answer waits there ~3 s before its drop:
    if watching ends first, the reply was neither seen leaving nor dropped. That is not an answer (an
    emulated 6.12 under load called such a host healthy), and the parked reply is what is shown."""
    from dnattrace.model import Connection, Journey, Step, Tuple5
    key = Tuple5(6, "198.51.100.2", 40000, "198.51.100.1", 8080)
    back = Tuple5(6, "172.31.0.2", 80, "198.51.100.2", 40000)
    syn = Journey(1, [Step(1, "rx", tuple=key, tcp_flags="S"), Step(2, "consume", location="tcp_v4_rcv+0x1")])
    routed = [Step(3, "rx", ifname="br", tuple=back, tcp_flags="SA"),
              Step(4, "route", route=RouteInfo(254, oif="uplink2", dst="198.51.100.2", local=False)),
              Step(5, "nf", hook="POSTROUTING", stage="last", tuple=back, tcp_flags="SA")]
    parked = Journey(2, list(routed), direction="reply")
    c = Connection(key, [syn], [parked])
    assert not parked.left and c.outcome == "reply-unfinished" and engine.failing(c)
    assert engine.representative(c) is parked
    # the matrix's 6.12 under load: the first SYN-ACK dropped on the neighbour, the retransmitted one still
    # parked when watching ended (it was called healthy, then unexplained by a duplicate SYN's drop)
    dropped = Journey(3, routed + [Step(9, "drop", location="neigh_invalidate+0x87", reason="NEIGH_FAILED")],
                      direction="reply")
    dup_syn = Journey(4, [Step(7, "rx", tuple=key, tcp_flags="S"), Step(8, "drop", location="tcp_v4_rcv+0x9a")])
    c = Connection(key, [syn, dup_syn], [dropped, Journey(5, list(routed), direction="reply")])
    assert c.outcome == "reply-dropped" and engine.representative(c) is dropped
    sent = Journey(2, routed + [Step(6, "xmit", ifname="uplink2", tuple=back, tcp_flags="SA")], direction="reply")
    assert sent.left and Connection(key, [syn], [sent]).outcome == "answered"
    local = Journey(2, [Step(3, "route", route=RouteInfo(255, oif="lo", local=True), tuple=back)], direction="reply")
    assert local.left and Connection(key, [syn], [local]).outcome == "answered"


def test_inferred_reason_matches_like_a_reported_one():
    """5.10 reports no drop reasons: the inferred one (marked) is what the causes match on."""
    from dnattrace.watch import infer
    steps = [*prerouting(), *forwarded()[:1], drop("ip_error+0x68", "")]
    c = conn(*steps)
    infer.infer_drop_reasons(c.requests[0])
    d = c.requests[0].drop
    assert (d.reason, d.reason_inferred) == ("IP_INADDRERRORS", True)
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                          "net.ipv4.conf.veth-ext.forwarding": "0"})
    assert top(engine.explain([c], snap(host(off)))).cause_id == "forwarding-off"


def test_drop_sites_compare_without_compiler_suffixes():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN), drop("ip_rcv_finish_core.constprop.0+0x1ab", "IP_RPFILTER", T_IN))
    f = engine.Facts(c, snap(), None)
    assert f.func == "ip_rcv_finish_core"


def test_a_failing_share_is_measured_and_called_intermittent():
    ok = conn(*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT),
              replies=[[s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="SA"),
                        s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="SA")]])
    sn = snap(host(neighbours=_failed_nb()))
    sn.holders = {INNER: None}
    found = engine.explain([ok] * 9 + [_neigh_conn()], sn, seconds=5.0)
    assert found[0].cause_id == "neigh-failed" and found[0].share == "1 of 10 connections followed over 5.0 s"
    assert found[0].evidence[0].startswith("intermittent: 1 of 10 connections followed failed this way over 5.0 s; 9 were answered")


def test_a_data_request_dropped_after_the_handshake_is_a_stall_not_an_answer():
    data = [s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="PA"), drop("ip_forward+0x1f0", "PKT_TOO_BIG")]
    c = _handshake(data)
    assert c.outcome == "stalled" and engine.failing(c)
    assert engine.representative(c) is c.requests[-1]


def test_data_delivered_with_nothing_coming_back_is_a_failure_said_in_the_kernels_words():
    data = [s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="PA"), s(CONSUME, location="tcp_rcv_established+0x1",
                                                                     netns=CONT, tuple=T_NAT)]
    c = _handshake(data)
    assert c.outcome == "answered" and engine.failing(c)
    f = top(engine.explain([c], snap()))
    assert f.cause_id == "unexplained" and "no data came back" in f.explanation


def test_data_answered_is_healthy():
    data = [s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="PA"), s(CONSUME, location="tcp_v4_rcv+0x1", netns=CONT)]
    reply = [s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="PA"),
             s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="PA")]
    c = _handshake(data, [reply])
    assert not engine.failing(c) and engine.explain([c], snap()) == []


def test_a_connection_whose_events_were_lost_is_no_failure():
    c = conn(*prerouting(), *forwarded())
    c.requests[0].lost_events = 3
    assert c.outcome == "incomplete" and not engine.failing(c)
    assert engine.explain([c], snap()) == []


def _answered():
    return conn(*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT),
                replies=[[s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="SA"),
                          s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="SA")]])


def test_the_ports_packets_dropped_unfollowed_make_an_answered_port_a_failure():
    stray = [{"count": 12, "location": "__dev_queue_xmit+0x1", "function": "__dev_queue_xmit",
              "reason": "QDISC_DROP", "netns": "host", "netns_inode": HOST, "proto": "tcp", "port": 8080}]
    h = host(qdiscs=[{"dev": "br0", "kind": "tbf", "handle": "1:", "parent": "root", "drops": 12}])
    found = engine.explain([_answered()], snap(h), stray_drops=stray)
    assert found and found[0].evidence[0].startswith("every followed connection was answered, but 12 of")
    assert engine.explain([_answered()], snap(h), stray_drops=[dict(stray[0], reason="SOCKET_CLOSE")]) == []
    assert engine.explain([_answered()], snap(h), stray_drops=[dict(stray[0], netns_inode=99)]) == []
