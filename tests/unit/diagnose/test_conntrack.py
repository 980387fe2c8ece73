"""Conntrack and NAT decisions replayed (diagnose/conntrack.py): a full table, stale NAT bindings, a
published port's packet that conntrack did not track.

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


def test_conntrack_table_full():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN), s(NF, hook="PREROUTING", stage="first", tuple=T_IN),
             drop("nf_hook_slow+0xb2", "NETFILTER_DROP", T_IN))
    h = host(conntrack={"count": 1024, "max": 1024, "drop": 7})
    d = delta(conntrack={"drop": 3})
    f = top(engine.explain([c], snap(h), d))
    assert f.cause_id == "conntrack-full"
    assert f.fix == ["sysctl -w net.netfilter.nf_conntrack_max=131072"]


def test_a_flow_bound_to_an_old_nat_target_is_a_stale_entry_not_a_forward_drop():
    old = Tuple5(6, CLIENT, 41822, "172.17.0.9", 80)
    ct = CtInfo("NEW", orig=T_IN, reply=Tuple5(6, "172.17.0.9", 80, CLIENT, 41822))
    c = conn(*prerouting(T_IN, old, ct), *forwarded(old), drop("nft_do_chain+0x4f2", "NETFILTER_DROP", old))
    c.requests[0].steps[-2].hook = "FORWARD"
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    d = delta(CounterMove("filter", "FORWARD", "policy DROP", 1, 60, "DROP", policy=True))
    found = engine.explain([c], snap(host(rules=rules)), d)
    assert found[0].cause_id == "stale-nat-target"
    assert found[0].fix == ["conntrack -D -p tcp --orig-port-dst 8080 --reply-src 172.17.0.9"]
    assert "filter-forward-drop" not in [x.cause_id for x in found]


def _unnated_conn(ct):
    steps = [s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="S"),
             s(NF, hook="PREROUTING", stage="first", priority=-2147483647, ifname="veth-ext", tuple=T_IN),
             s(NF, hook="PREROUTING", stage="last", priority=2147483646, ifname="veth-ext", tuple=T_IN, ct=ct),
             s(ROUTE, route=RouteInfo(255, oif="lo", dst=PUBLIC, local=True), tuple=T_IN),
             drop("tcp_v4_rcv+0x1a0", "NO_SOCKET", T_IN)]
    return conn(*steps)


def _published_host(**kw):
    h = host(**kw)
    h.links[0].addresses = ["198.51.100.1/24"]
    return h


def test_an_untracked_packet_of_a_published_port_names_the_notrack_rule_not_a_missing_listener():
    move = CounterMove("raw", "PREROUTING", "-A PREROUTING -p tcp -j CT --notrack", 1, 60, "CT")
    found = engine.explain([_unnated_conn(CtInfo("UNTRACKED"))], snap(_published_host()), delta(move))
    assert found[0].cause_id == "nat-skipped", found[0]
    assert found[0].fix == ["iptables -t raw -D PREROUTING -p tcp -j CT --notrack"]
    assert "no-listener" not in [x.cause_id for x in found]
    assert "udp-stale-conntrack" not in [x.cause_id for x in found]


def test_a_packet_conntrack_found_invalid_is_said_so_with_the_counter():
    d = delta(conntrack={"invalid": 3})
    f = top(engine.explain([_unnated_conn(None)], snap(_published_host()), d))
    assert f.cause_id == "nat-skipped" and "invalid" in f.explanation and "conntrack invalid +3" in f.evidence
