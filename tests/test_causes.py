"""The cause catalogue on recorded journeys: each cause is the top finding for the journey shape and
evidence the kernel gives for it, with the right fix; healthy connections give no finding.

Journeys are built with the model's dataclasses the way the watch machinery records them; snapshots
are built from the system module's dataclasses (and one case goes through JSON both ways).
"""
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


def test_healthy_connection_gives_no_finding():
    steps = prerouting() + forwarded() + [s(XMIT, ifname="br0", tuple=T_NAT),
                                          s(RX, ifname="eth0", netns=CONT, tuple=T_NAT),
                                          s(CONSUME, netns=CONT, location="tcp_v4_rcv+0x3b")]
    c = conn(*steps, replies=[[s(RX, netns=CONT, tcp_flags="SA"), s(XMIT, ifname="veth-ext", tcp_flags="SA")]])
    found = engine.explain([c], snap())
    assert found == [] and engine.top_cause(found) == "none"


def test_forward_policy_drop_names_the_policy():
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    c = conn(*prerouting(), *forwarded(), drop("nft_do_chain+0x4f2", "NETFILTER_DROP"), attempts=2)
    d = delta(CounterMove("filter", "FORWARD", "policy DROP", 2, 120, "DROP", policy=True))
    f = top(engine.explain([c], snap(host(rules=rules)), d))
    assert f.cause_id == "filter-forward-drop"
    assert f.rule == {"table": "filter", "chain": "FORWARD", "rule": "policy DROP", "packets": 2}
    assert f.fix == ["iptables -I FORWARD -d 172.17.0.2 -p tcp --dport 80 -j ACCEPT"]


def test_docker_user_rule_is_named_and_removed():
    rule = "-A DOCKER-USER -s 198.51.100.0/24 -j DROP"
    rules = RULES.replace("[0:0] -A DOCKER-USER -j RETURN", "[0:0] %s\n[0:0] -A DOCKER-USER -j RETURN" % rule)
    c = conn(*prerouting(), *forwarded(), drop("nft_do_chain+0x4f2", "NETFILTER_DROP"))
    before = parse_iptables_save(rules)
    after = parse_iptables_save(rules.replace("[0:0] %s" % rule, "[3:180] %s" % rule))
    from dnattrace.evidence.firewall import counter_delta
    d = delta(*counter_delta(before, after))
    f = top(engine.explain([c], snap(host(rules=rules)), d))
    assert f.cause_id == "filter-forward-drop"
    assert f.rule["chain"] == "DOCKER-USER" and f.rule["packets"] == 3
    assert f.fix == ["iptables -t filter -D DOCKER-USER -s 198.51.100.0/24 -j DROP"]


def test_packet_that_entered_forward_and_never_left_it_is_a_forward_drop():
    c = conn(*prerouting(), *forwarded())       # no drop event (e.g. lost), last seen at FORWARD/first
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    f = top(engine.explain([c], snap(host(rules=rules))))
    assert f.cause_id == "filter-forward-drop"


def test_input_rule_drop_on_a_host_published_port():
    local = Tuple5(6, CLIENT, 41822, PUBLIC, 2222)
    rule = "-A INPUT -p tcp -m tcp --dport 2222 -j DROP"
    rules = RULES.replace(":OUTPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]\n[0:0] " + rule)
    steps = [s(RX, ifname="veth-ext", tuple=local), s(NF, hook="PREROUTING", stage="first", tuple=local),
             s(ROUTE, route=RouteInfo(255, oif="lo", dst=PUBLIC, local=True), tuple=local),
             s(NF, hook="INPUT", stage="first", tuple=local),
             drop("nft_do_chain+0x4f2", "NETFILTER_DROP", local)]
    d = delta(CounterMove("filter", "INPUT", rule, 2, 120, "DROP"))
    found = engine.explain([conn(*steps, key=local)], snap(host(rules=rules), target=Target("tcp", 2222)), d)
    f = top(found)
    assert f.cause_id == "filter-input-drop"
    assert f.rule["rule"] == rule
    assert f.fix == ["iptables -t filter -D INPUT -p tcp -m tcp --dport 2222 -j DROP"]
    assert "filter-forward-drop" not in [x.cause_id for x in found]


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


def test_no_route_with_forwarding_on():
    c = conn(*prerouting(), s(ROUTE, route=RouteInfo(254, err=-101, dst=INNER)),
             drop("ip_error+0x68", "IP_INNOROUTES"))
    f = top(engine.explain([c], snap()))
    assert f.cause_id == "no-route"
    assert "forwarding-off" not in [x.cause_id for x in engine.explain([c], snap())]


def test_neighbour_that_never_answers_arp():
    c = conn(*prerouting(), *forwarded(), drop("neigh_invalidate+0x9c", "NEIGH_FAILED"))
    h = host(neighbours=[{"addr": INNER, "dev": "br0", "state": "FAILED", "lladdr": ""}])
    f = top(engine.explain([c], snap(h)))
    assert f.cause_id == "neigh-failed"
    assert "neighbour 172.17.0.2 on br0: FAILED" in f.evidence


def test_conntrack_table_full():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN), s(NF, hook="PREROUTING", stage="first", tuple=T_IN),
             drop("nf_hook_slow+0xb2", "NETFILTER_DROP", T_IN))
    h = host(conntrack={"count": 1024, "max": 1024, "drop": 7})
    d = delta(conntrack={"drop": 3})
    f = top(engine.explain([c], snap(h), d))
    assert f.cause_id == "conntrack-full"
    assert f.fix == ["sysctl -w net.netfilter.nf_conntrack_max=131072"]


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


def test_bridged_traffic_dropped_by_br_netfilter_is_named_instead_of_a_plain_forward_drop():
    t = Tuple5(6, "172.17.0.3", 40000, INNER, 80)
    steps = [s(RX, ifname="veth-a", tuple=t),
             s(NF, hook="PREROUTING", stage="first", ifname="br0", tuple=t),
             s(NF, hook="FORWARD", stage="first", ifname="br0", out_ifname="br0", tuple=t),
             drop("nft_do_chain+0x4f2", "NETFILTER_DROP", t)]
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    h = host(dict(FWD_ON, **{"net.bridge.bridge-nf-call-iptables": "1"}), rules=rules)
    d = delta(CounterMove("filter", "FORWARD", "policy DROP", 1, 60, "DROP", policy=True))
    found = engine.explain([conn(*steps, key=t)], snap(h), d)
    assert [f.cause_id for f in found] == ["br-netfilter"]     # the plain forward drop defers to it
    assert any(r.startswith("not filter-forward-drop: br-netfilter explains") for r in found[0].ruled_out)
    assert found[0].fix == ["sysctl -w net.bridge.bridge-nf-call-iptables=0"]
    # the same drop on a routed path (a route decision, in != out) is not br-netfilter
    routed = prerouting() + forwarded() + [drop("nft_do_chain+0x4f2", "NETFILTER_DROP")]
    assert top(engine.explain([conn(*routed)], snap(h), d)).cause_id == "filter-forward-drop"


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


def test_nft_base_chains_of_other_tables_are_read_with_hook_and_policy():
    from dnattrace.evidence import firewall
    text = json.dumps({"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "inet", "name": "filter", "handle": 1}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "filter", "name": "helper", "handle": 2}},
        {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3,
                  "expr": [{"counter": {"packets": 4, "bytes": 240}}, {"drop": None}]}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
    ]})
    chains = firewall.parse_nft_base_chains(text)
    assert [(c["family"], c["table"], c["chain"], c["hook"], c["policy"]) for c in chains] == [
        ("inet", "filter", "forward", "forward", "DROP"), ("ip", "filter", "FORWARD", "forward", "ACCEPT")]
    assert chains[0]["rules"] == [{"verdict": "DROP", "packets": 4}]


def test_nft_rules_carry_their_ct_state_match():
    """foreign-nft-reply-drop needs to know whether a chain accepts established traffic."""
    from dnattrace.evidence import firewall
    text = json.dumps({"nftables": [
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"counter": {"packets": 2, "bytes": 120}}, {"accept": None}]}},
        {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": None}]}},
    ]})
    rules = firewall.parse_nft_base_chains(text)[0]["rules"]
    assert rules == [{"verdict": "ACCEPT", "packets": 2, "ct_state": ["new"]},
                     {"verdict": "ACCEPT", "packets": None, "ct_state": ["established", "related"]}]


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


def test_forward_policy_drop_from_the_verdict_alone():
    """A kernel without netfilter hook steps (no links, no nf_hook_slow entry probe): the hook comes from
    nf_hook_slow's verdict; no crash on a journey without a netfilter-hook step."""
    from dnattrace.model import VERDICT
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN, tcp_flags="S"),
             s(ROUTE, route=RouteInfo(254, oif="br0", dst=INNER, local=False)),
             s(VERDICT, hook="FORWARD", reason="NF_DROP"), drop("nf_hook_slow+0x9b", "NETFILTER_DROP"))
    d = delta(CounterMove("filter", "FORWARD", "policy DROP", 1, 60, "DROP", policy=True))
    f = top(engine.explain([c], snap(host(rules=rules)), d))
    assert f.cause_id == "filter-forward-drop"
    assert any("FORWARD (its verdict)" in e for e in f.evidence)


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


def test_drop_sites_compare_without_compiler_suffixes():
    c = conn(s(RX, ifname="veth-ext", tuple=T_IN), drop("ip_rcv_finish_core.constprop.0+0x1ab", "IP_RPFILTER", T_IN))
    f = engine.Facts(c, snap(), None)
    assert f.func == "ip_rcv_finish_core"


def test_a_packet_purged_with_its_unresolved_neighbour_is_a_neighbour_failure():
    """The same fault drops some packets at neigh_invalidate (NEIGH_FAILED) and others, queued on the
    entry, at neigh_destroy (QUEUE_PURGE) when it is destroyed: both read as the neighbour failing."""
    c = conn(*(prerouting() + forwarded() + [drop("neigh_destroy+0x89", "QUEUE_PURGE")]))
    f = top(engine.explain([c], snap()))
    assert f.cause_id == "neigh-failed", f


# --- decision replay: the layer-2 path, stale NAT targets, counters that did not move -----------------

def _neigh_conn():
    return conn(*prerouting(), *forwarded(), drop("neigh_invalidate+0x9c", "NEIGH_FAILED"))


def _failed_nb():
    return [{"addr": INNER, "dev": "br0", "state": "FAILED", "lladdr": ""}]


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


def test_a_drop_policy_whose_counter_did_not_move_did_not_drop_it():
    c = conn(*prerouting(), *forwarded(), drop("nft_do_chain+0x4f2", "NETFILTER_DROP"))
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    found = engine.explain([c], snap(host(rules=rules)), delta())
    assert "filter-forward-drop" not in [x.cause_id for x in found]
    assert found[0].cause_id == "unexplained" and "FORWARD" in found[0].explanation
    assert any(r.startswith("not filter-forward-drop: no DROP rule or policy counter") for r in found[0].ruled_out)


def test_a_failing_share_is_measured_and_called_intermittent():
    ok = conn(*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT),
              replies=[[s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="SA"),
                        s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="SA")]])
    sn = snap(host(neighbours=_failed_nb()))
    sn.holders = {INNER: None}
    found = engine.explain([ok] * 9 + [_neigh_conn()], sn, seconds=5.0)
    assert found[0].cause_id == "neigh-failed" and found[0].share == "1 of 10 connections over 5.0 s"
    assert found[0].evidence[0].startswith("intermittent: 1 of 10 connections failed this way over 5.0 s; 9 were answered")


# --- the route lookup replayed through the policy rules -----------------------------------------------

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


# --- the whole conversation: the handshake works, the data does not ------------------------------------

def _handshake(data_request_steps, data_replies=()):
    syn = [*prerouting(), *forwarded(), s(XMIT, ifname="br0", tuple=T_NAT)]
    synack = [s(RX, ifname="br0", tuple=T_NAT.reversed(), tcp_flags="SA"),
              s(XMIT, ifname="veth-ext", tuple=T_IN.reversed(), tcp_flags="SA")]
    c = conn(*syn, replies=[synack, *data_replies])
    c.requests.append(Journey(skb=0x3000, steps=data_request_steps))
    return c


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


# --- NAT not applied: the conntrack state the packet carried through PREROUTING says why -------------

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


# --- below IP: tc and XDP programs, qdiscs -------------------------------------------------------------

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
