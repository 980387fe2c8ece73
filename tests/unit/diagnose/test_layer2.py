"""Layer-2 decisions replayed (diagnose/layer2.py): who holds the next hop, and whether the path to it
is whole.

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


def test_neighbour_that_never_answers_arp():
    c = conn(*prerouting(), *forwarded(), drop("neigh_invalidate+0x9c", "NEIGH_FAILED"))
    h = host(neighbours=[{"addr": INNER, "dev": "br0", "state": "FAILED", "lladdr": ""}])
    f = top(engine.explain([c], snap(h)))
    assert f.cause_id == "neigh-failed"
    assert "neighbour 172.17.0.2 on br0: FAILED" in f.evidence


def test_a_packet_purged_with_its_unresolved_neighbour_is_a_neighbour_failure():
    """The same fault drops some packets at neigh_invalidate (NEIGH_FAILED) and others, queued on the
    entry, at neigh_destroy (QUEUE_PURGE) when it is destroyed: both read as the neighbour failing."""
    c = conn(*(prerouting() + forwarded() + [drop("neigh_destroy+0x89", "QUEUE_PURGE")]))
    f = top(engine.explain([c], snap()))
    assert f.cause_id == "neigh-failed", f


def test_a_next_hop_nobody_holds_is_named_as_the_nat_target():
    sn = snap(host(neighbours=_failed_nb()))
    sn.holders = {INNER: None}
    f = top(engine.explain([_neigh_conn()], sn))
    assert f.cause_id == "neigh-failed"
    assert "no namespace on this host" in " ".join(f.evidence) and INNER in f.object
    assert f.unread == []


def test_a_next_hop_held_behind_a_down_link_gets_that_link_brought_up():
    holder = container(links=[Link("eth0", 2, "DOWN", False, "veth", "", ["172.17.0.2/16"], peer=7)])
    sn = snap(host(neighbours=_failed_nb()))
    sn.holders = {INNER: holder}
    f = top(engine.explain([_neigh_conn()], sn))
    assert f.cause_id == "neigh-failed"
    assert f.fix == ["nsenter --net=/proc/4242/ns/net ip link set eth0 up"]
    assert "link eth0 in web" == f.object


def test_a_next_hop_whose_veth_peer_sits_on_another_bridge_gets_the_peer_moved():
    links = [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"]),
             Link("br0", 3, "UP", True, "bridge", "", ["172.17.0.1/16"]),
             Link("br9", 4, "UP", True, "bridge", "", []),
             Link("vethc", 7, "UP", True, "veth", "br9", [])]
    holder = container(links=[Link("eth0", 2, "UP", True, "veth", "", ["172.17.0.2/16"], peer=7)])
    sn = snap(host(links=links, neighbours=_failed_nb()))
    sn.holders = {INNER: holder}
    f = top(engine.explain([_neigh_conn()], sn))
    assert f.fix == ["ip link set vethc master br0"]
    assert "bridge br9" in f.explanation


def test_an_unread_holder_is_said_and_costs_confidence():
    f = top(engine.explain([_neigh_conn()], snap(host(neighbours=_failed_nb()))))
    assert f.cause_id == "neigh-failed" and f.unread and f.confidence < 1
