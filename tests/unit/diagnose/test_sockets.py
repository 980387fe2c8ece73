"""Socket decisions replayed (diagnose/sockets.py): nothing listening where the packet arrived.

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


def test_no_socket_in_the_container_is_no_listener():
    steps = prerouting() + forwarded() + [s(XMIT, ifname="br0", tuple=T_NAT),
                                          s(RX, ifname="eth0", netns=CONT, tuple=T_NAT),
                                          s(NF, hook="INPUT", stage="last", netns=CONT, tuple=T_NAT),
                                          drop("tcp_v4_rcv+0x7a", "NO_SOCKET", netns=CONT)]
    c = conn(*steps, replies=[[s(RX, netns=CONT, tcp_flags="R"), s(XMIT, ifname="veth-ext", tcp_flags="R")]])
    cont = container(listeners=[Listener("tcp", "0.0.0.0", 8081, 1)])
    f = top(engine.explain([c], snap(c=cont)))
    assert f.cause_id == "no-listener"
    assert f.netns == "web" and f.fix is None
    assert any("nothing listens on tcp port 80 in web" in e for e in f.evidence)


def test_rst_reply_with_a_loopback_only_listener_says_so():
    steps = prerouting() + forwarded() + [s(RX, ifname="eth0", netns=CONT, tuple=T_NAT)]
    c = conn(*steps, replies=[[s(RX, netns=CONT, tcp_flags="R", tuple=T_NAT.reversed())]])
    cont = container(listeners=[Listener("tcp", "127.0.0.1", 80, 1)])
    f = top(engine.explain([c], snap(c=cont)))
    assert f.cause_id == "no-listener"
    assert "127.0.0.1" in f.explanation


def test_a_listener_that_accepts_the_packet_contradicts_no_listener():
    c = conn(*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT),
             drop("tcp_v4_rcv+0x6b", "NO_SOCKET", netns=CONT))
    found = engine.explain([c], snap(c=container(listeners=[Listener("tcp", "0.0.0.0", 80, 1)])))
    assert "no-listener" not in [x.cause_id for x in found]
    assert found[0].cause_id == "unexplained" and "NO_SOCKET" in found[0].explanation
