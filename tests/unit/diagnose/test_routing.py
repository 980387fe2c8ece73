"""Routing decisions replayed (diagnose/routing.py): forwarding, the route lookup through the policy rules,
reverse path, martians, the reply's route.

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


def test_forwarding_off_globally():
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                          "net.ipv4.conf.veth-ext.forwarding": "0"})
    f = top(engine.explain([forwarding_off_conn()], snap(host(off))))
    assert f.cause_id == "forwarding-off"
    assert f.fix == ["sysctl -w net.ipv4.ip_forward=1"]
    assert "/etc/sysctl.d/" in f.fix_note
    assert "net.ipv4.conf.veth-ext.forwarding = 0" in "; ".join(f.evidence)
    assert f.confidence >= 0.9
    assert any("ip_error+0x68" in e for e in f.evidence)


def test_forwarding_off_on_the_ingress_interface_only_names_that_interface():
    # other addresses and names than the lab's: the catalogue must not depend on them
    t_in, t_nat = Tuple5(6, "10.9.8.7", 5555, "10.0.0.1", 443), Tuple5(6, "10.9.8.7", 5555, "10.244.1.5", 8443)
    ct = CtInfo("NEW", orig=t_in, reply=Tuple5(6, "10.244.1.5", 8443, "10.9.8.7", 5555))
    c = conn(*prerouting(t_in, t_nat, ct, "ens5"), *forwarded(t_nat, "cni0")[:1],
             drop("ip_error+0x68", "IP_INADDRERRORS", t_nat), key=t_in)
    sysctls = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.forwarding": "1", "net.ipv4.conf.ens5.forwarding": "0"}
    h = host(sysctls, links=[Link("ens5", 2, "UP", True, "", "", ["10.0.0.1/24"])])
    f = top(engine.explain([c], snap(h, target=Target("tcp", 443))))
    assert f.cause_id == "forwarding-off"
    assert f.fix == ["sysctl -w net.ipv4.conf.ens5.forwarding=1"]
    assert "10.244.1.5:8443" in f.explanation


def test_forwarding_off_but_delivered_locally_is_not_forwarding_off():
    off = dict(FWD_ON, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                          "net.ipv4.conf.veth-ext.forwarding": "0"})
    local = Tuple5(6, CLIENT, 41822, PUBLIC, 8080)
    steps = [s(RX, ifname="veth-ext", tuple=local), s(NF, hook="PREROUTING", stage="first", tuple=local),
             s(ROUTE, route=RouteInfo(255, oif="lo", dst=PUBLIC, local=True)), s(NF, hook="INPUT", stage="last"),
             s(CONSUME, location="tcp_v4_rcv+0x1")]
    target = Target("tcp", 8080)
    answered = conn(*steps, replies=[[s(XMIT, ifname="veth-ext", tcp_flags="SA")]])
    assert engine.explain([answered], snap(host(off), target=target)) == []
    silent = conn(*steps)      # delivered, no reply, and nothing else known: still not forwarding
    assert "forwarding-off" not in [f.cause_id for f in engine.explain([silent], snap(host(off), target=target))]


def test_no_route_with_forwarding_on():
    c = conn(*prerouting(), s(ROUTE, route=RouteInfo(254, err=-101, dst=INNER)),
             drop("ip_error+0x68", "IP_INNOROUTES"))
    f = top(engine.explain([c], snap()))
    assert f.cause_id == "no-route"
    assert "forwarding-off" not in [x.cause_id for x in engine.explain([c], snap())]


def test_reverse_path_filter():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN), drop("ip_rcv_finish_core+0x1a1", "IP_RPFILTER", T_IN))
    h = host(dict(FWD_ON, **{"net.ipv4.conf.all.rp_filter": "1"}))
    f = top(engine.explain([c], snap(h)))
    assert f.cause_id == "rp-filter"
    assert f.fix == ["sysctl -w net.ipv4.conf.veth-ext.rp_filter=2"]
    assert f.workaround, "loose mode lets it through; the cure is the route back"
    assert f.confidence == 1.0
    assert not top(engine.explain([forwarding_off_conn()], snap(host({"net.ipv4.ip_forward": "0"})))).workaround


def test_loopback_source_is_martian():
    t = Tuple5(6, "127.0.0.5", 1000, PUBLIC, 8080)
    c = conn(s(RX, ifname="veth-ext", tuple=t), drop("ip_rcv_finish_core+0x2f0", "IP_LOCALNET", t), key=t)
    h = host(dict(FWD_ON, **{"net.ipv4.conf.veth-ext.route_localnet": "0"}))
    f = top(engine.explain([c], snap(h)))
    assert f.cause_id == "martian-source"
    assert f.fix == ["sysctl -w net.ipv4.conf.veth-ext.route_localnet=1"]


def test_reply_that_cannot_be_routed():
    steps = prerouting() + forwarded() + [s(XMIT, ifname="br0", tuple=T_NAT),
                                          s(RX, ifname="eth0", netns=CONT, tuple=T_NAT),
                                          s(CONSUME, netns=CONT, location="tcp_v4_rcv+0x3b")]
    cont = container(lookups=[RouteResult(CLIENT, err=101, error="ENETUNREACH")], routes=["172.17.0.0/16 dev eth0"],
                     listeners=[Listener("tcp", "0.0.0.0", 80, 1)])
    d = Delta([NsDelta("host", HOST, None), NsDelta("web", CONT, "/proc/4242/ns/net", snmp={"IpOutNoRoutes": 2})])
    f = top(engine.explain([conn(*steps, attempts=2)], snap(c=cont), d))
    assert f.cause_id == "reply-no-route"
    assert f.fix == ["nsenter --net=/proc/4242/ns/net ip route add default via 172.17.0.1"]
    # delivered and silent with no sign of a routing failure: not this cause
    assert "reply-no-route" not in [x.cause_id for x in engine.explain([conn(*steps)], snap(c=container()))]


def _no_route_conn(reason="IP_INNOROUTES"):
    return conn(*prerouting(), *forwarded()[:1], drop("ip_error+0x68", reason))


MAIN_RULES = [{"priority": 0, "src": "all", "table": "local", "family": 4},
              {"priority": 32766, "src": "all", "table": "main", "family": 4},
              {"priority": 32767, "src": "all", "table": "default", "family": 4}]


MAIN_ROUTES = [{"dst": "172.17.0.0/16", "dev": "br0", "family": 4},
               {"dst": "198.51.100.0/24", "dev": "veth-ext", "family": 4}]


def test_a_policy_rule_that_sends_the_lookup_to_a_table_without_the_route_is_named():
    rules = MAIN_RULES + [{"priority": 100, "src": "198.51.100.0", "srclen": 24, "table": "100", "family": 4}]
    routes = MAIN_ROUTES + [{"type": "unreachable", "dst": "172.16.0.0/12", "table": "100", "family": 4}]
    f = top(engine.explain([_no_route_conn("IP_INADDRERRORS")], snap(host(rule_list=rules, table_routes=routes))))
    assert f.cause_id == "no-route"
    assert f.object == "ip rule 100: from 198.51.100.0/24 lookup 100 in host"
    assert f.fix == ["ip rule add from 198.51.100.2 to 172.17.0.2 iif veth-ext lookup main pref 99"]
    assert "forwarding-off" not in [x.cause_id for x in engine.explain([_no_route_conn("IP_INADDRERRORS")],
                                                                        snap(host(rule_list=rules, table_routes=routes)))]


def test_a_bridge_that_lost_its_address_gets_it_back():
    links = [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"]),
             Link("br0", 3, "UP", True, "bridge", "", []), Link("vethc", 7, "UP", True, "veth", "br0", [])]
    cont = container(links=[Link("eth0", 2, "UP", True, "veth", "", ["172.17.0.2/16"], peer=7)],
                     routes=["default via 172.17.0.1 dev eth0"])
    h = host(links=links, rule_list=MAIN_RULES, table_routes=MAIN_ROUTES[1:])
    f = top(engine.explain([_no_route_conn()], snap(h, cont)))
    assert f.cause_id == "no-route"
    assert f.fix == ["ip addr add 172.17.0.1/16 dev br0"] and f.object == "the address of br0 in host"


def test_a_route_the_replay_finds_contradicts_no_route():
    found = engine.explain([_no_route_conn()], snap(host(rule_list=MAIN_RULES, table_routes=MAIN_ROUTES)))
    assert "no-route" not in [x.cause_id for x in found]
    assert any(r.startswith("not no-route: replayed through the policy rules") for r in found[0].ruled_out)


def test_a_rule_selecting_on_a_mark_is_said_as_unread():
    rules = MAIN_RULES + [{"priority": 90, "src": "all", "fwmark": "0x1", "table": "7", "family": 4}]
    f = top(engine.explain([_no_route_conn()], snap(host(rule_list=rules, table_routes=MAIN_ROUTES[1:]))))
    assert f.cause_id == "no-route" and any("fwmark 0x1" in u for u in f.unread) and f.confidence < 1


# --- a route that sends the packet away from its destination ------------------------------------------

def _routed_away(oif, gw, drop_step):
    steps = [*prerouting(), s(ROUTE, route=RouteInfo(254, oif=oif, dst=INNER, gateway=gw, local=False), tuple=T_NAT),
             drop_step]
    return conn(*steps)


def test_a_bridge_that_lost_its_address_sends_the_packet_to_the_default_gateway_and_is_named():
    links = [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"]),
             Link("br0", 3, "UP", True, "bridge", "", []), Link("vethc", 7, "UP", True, "veth", "br0", [])]
    holder = container(links=[Link("eth0", 2, "UP", True, "veth", "", ["172.17.0.2/16"], peer=7)],
                       routes=["default via 172.17.0.1 dev eth0"])
    c = _routed_away("veth-ext", "198.51.100.254", drop("neigh_invalidate+0x9c", "NEIGH_FAILED"))
    sn = snap(host(links=links, neighbours=[{"addr": "198.51.100.254", "dev": "veth-ext", "state": "FAILED"}]))
    sn.holders = {INNER: holder, "198.51.100.254": None}
    f = top(engine.explain([c], sn))
    assert f.cause_id == "misrouted" and f.fix == ["ip addr add 172.17.0.1/16 dev br0"]
    assert "neigh-failed" not in [x.cause_id for x in engine.explain([c], sn)]


def test_a_policy_rule_sending_the_packet_into_a_device_without_carrier_is_named_not_its_queue():
    links = [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"]),
             Link("br0", 3, "UP", True, "bridge", "", ["172.17.0.1/16"]), Link("tun0", 9, "DOWN", True, "tun", "", [])]
    rules = MAIN_RULES + [{"priority": 5200, "src": "all", "table": "52", "family": 4}]
    routes = MAIN_ROUTES + [{"dst": "172.16.0.0/12", "dev": "tun0", "table": "52", "family": 4}]
    c = _routed_away("tun0", "", s(DROP, location="__dev_queue_xmit+0x1", reason="QDISC_DROP", ifname="tun0",
                                   tuple=T_NAT))
    h = host(links=links, rule_list=rules, table_routes=routes,
             qdiscs=[{"dev": "tun0", "kind": "noop", "handle": "0:", "parent": "root", "drops": 3}])
    found = engine.explain([c], snap(h))
    assert found[0].cause_id == "misrouted" and found[0].object == "ip rule 5200: from all lookup 52 and table 52 in host"
    assert found[0].fix == ["ip rule add from 198.51.100.2 to 172.17.0.2 iif veth-ext lookup main pref 5199"]
    assert any(r.startswith("not qdisc-drop: tun0 cannot send") for r in found[0].ruled_out)


def test_a_packet_made_by_a_local_socket_is_never_a_forwarding_fault():
    reply = Tuple5(17, INNER, 53, CLIENT, 41822)
    c = Connection(key=Tuple5(17, CLIENT, 41822, PUBLIC, 5353), requests=[Journey(skb=1, steps=[
        s(RX, ifname="veth-ext", tuple=Tuple5(17, CLIENT, 41822, PUBLIC, 5353)),
        s(CONSUME, location="udp_queue_rcv_one_skb+0x1", netns=CONT)])],
        replies=[Journey(skb=2, direction="reply", steps=[
            s(ROUTE, netns=CONT, route=RouteInfo(254, oif="eth0", dst=CLIENT, local=False), tuple=reply)])])
    ctr = container()
    ctr.sysctls = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0"}
    found = engine.explain([c], snap(c=ctr))
    assert "forwarding-off" not in [x.cause_id for x in found]
