"""Recorded shapes for the diagnosis tests: journeys built with the model's dataclasses the way watch
records them, snapshots from the evidence dataclasses."""
import json

import pytest

from dnattrace.diagnose import engine
from dnattrace.model import (CONSUME, DROP, NF, ROUTE, RX, XMIT, Connection, CtInfo, Journey, RouteInfo, Step,
                             Tuple5, connection_from_dict, to_dict)
from dnattrace.evidence.firewall import CounterMove, parse_iptables_save
from dnattrace.evidence.links import Link, RouteResult
from dnattrace.evidence.snapshot import Delta, NsDelta, NsEvidence, Snapshot
from dnattrace.target import Endpoint, Target
from dnattrace.evidence.sockets import Listener


HOST, CONT = 4026531001, 4026532002
CLIENT, PUBLIC, INNER = "198.51.100.2", "198.51.100.1", "172.17.0.2"
T_IN = Tuple5(6, CLIENT, 41822, PUBLIC, 8080)
T_NAT = Tuple5(6, CLIENT, 41822, INNER, 80)
CT = CtInfo("NEW", orig=T_IN, reply=Tuple5(6, INNER, 80, CLIENT, 41822))
FWD_ON = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.forwarding": "1", "net.ipv4.conf.veth-ext.forwarding": "1",
          "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.veth-ext.rp_filter": "0"}
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
[0:0] -A FORWARD -j DOCKER-USER
[0:0] -A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[1:60] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[1:60] -A DOCKER ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
"""




def s(point, ts=0, netns=HOST, **kw):
    return Step(ts_ns=ts, point=point, netns=netns, **kw)


def prerouting(t_in=T_IN, t_nat=T_NAT, ct=CT, ifname="veth-ext", netns=HOST):
    return [s(RX, ifname=ifname, tuple=t_in, tcp_flags="S", netns=netns),
            s(NF, hook="PREROUTING", stage="first", ifname=ifname, tuple=t_in, netns=netns),
            s(NF, hook="PREROUTING", stage="dnat", ifname=ifname, tuple=t_nat, ct=ct, netns=netns)]


def forwarded(t_nat=T_NAT, oif="br0"):
    return [s(ROUTE, route=RouteInfo(254, oif=oif, dst=t_nat.dst, local=False), tuple=t_nat),
            s(NF, hook="FORWARD", stage="first", ifname="veth-ext", out_ifname=oif, tuple=t_nat)]


def drop(location, reason, t=T_NAT, netns=HOST):
    return s(DROP, location=location, reason=reason, tuple=t, netns=netns)


def conn(*request_steps, replies=(), attempts=1, key=T_IN):
    return Connection(key=key, requests=[Journey(skb=0x1000 + i, steps=list(request_steps)) for i in range(attempts)],
                      replies=[Journey(skb=0x2000 + i, steps=list(r), direction="reply") for i, r in enumerate(replies)])


def host(sysctls=None, rules=RULES, **kw):
    links = kw.pop("links", [Link("veth-ext", 2, "UP", True, "veth", "", ["198.51.100.1/24"]),
                             Link("br0", 3, "UP", True, "bridge", "", ["172.17.0.1/16"])])
    return NsEvidence(name="host", inode=HOST, sysctls=dict(FWD_ON if sysctls is None else sysctls), links=links,
                      rules=parse_iptables_save(rules) if rules else None, **kw)


def container(**kw):
    kw.setdefault("links", [Link("eth0", 2, "UP", True, "veth", "", ["172.17.0.2/16"])])
    return NsEvidence(name="web", netns="/proc/4242/ns/net", inode=CONT, sysctls=dict(FWD_ON), **kw)


def snap(h=None, c=None, target=None):
    return Snapshot(target or Target("tcp", 8080, [Endpoint(INNER, 80)], "web"), h or host(), c)


def delta(*moves, ns=HOST, **kw):
    return Delta([NsDelta("host" if ns == HOST else "web", ns, None, list(moves), **kw)])


def top(findings):
    assert findings, "expected a finding"
    for f in findings:      # every finding names the object that holds the wrong input
        assert f.object or f.cause_id in (engine.UNEXPLAINED, engine.NOTHING_ARRIVED), f
    return findings[0]


def forwarding_off_conn(attempts=3):
    return conn(*prerouting(), *forwarded()[:1], drop("ip_error+0x68", "IP_INADDRERRORS"), attempts=attempts)


def _neigh_conn():
    return conn(*prerouting(), *forwarded(), drop("neigh_invalidate+0x9c", "NEIGH_FAILED"))


def _failed_nb():
    return [{"addr": INNER, "dev": "br0", "state": "FAILED", "lladdr": ""}]


def _handshake(data_request_steps, data_replies=()):
    syn = [*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT)]
    synack = [s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="SA"),
              s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="SA")]
    c = conn(*syn, replies=[synack, *data_replies])
    c.requests.append(Journey(skb=0x3000, steps=data_request_steps))
    return c
