"""Netfilter verdicts replayed (diagnose/netfilter.py): which chain dropped it; a counter that did not
move did not drop it.

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


def test_a_drop_policy_whose_counter_did_not_move_did_not_drop_it():
    c = conn(*prerouting(), *forwarded(), drop("nft_do_chain+0x4f2", "NETFILTER_DROP"))
    rules = RULES.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")
    found = engine.explain([c], snap(host(rules=rules)), delta())
    assert "filter-forward-drop" not in [x.cause_id for x in found]
    assert found[0].cause_id == "unexplained" and "FORWARD" in found[0].explanation
    assert any(r.startswith("not filter-forward-drop: no DROP rule or policy counter") for r in found[0].ruled_out)
