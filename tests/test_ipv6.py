"""IPv6: a published port reached over IPv6 is followed, explained and counted like IPv4.

Units: recorded IPv6 journeys (tests/data/steps-v6-*.jsonl, scripts/record_steps on 6.18) through the
journey builder, and the cause catalogue on IPv6 facts with ip6tables and IPv6 sysctls as evidence.
Kernel: every IPv6 lab scenario through `watch --json`, `drops --json` and `diagnose --json` (the ground
truth of each is also held by test_diagnose.py and test_lab.py, which run every scenario).
"""
import json
import subprocess
import sys
import time

import pytest

import recorded
from conftest import slow
from dnattrace import model
from dnattrace.diagnose import engine, probeclient
from dnattrace.evidence.firewall import CounterMove, parse_iptables_save
from dnattrace.evidence.links import Link
from dnattrace.evidence.snapshot import Delta, NsDelta, NsEvidence, Snapshot
from dnattrace.lab import scenarios
from dnattrace.model import DROP, NF, ROUTE, RX, Connection, CtInfo, Journey, RouteInfo, Step, Tuple5
from dnattrace.target import Endpoint, Target
from dnattrace.watch import journeys

# other addresses than the lab's: the catalogue must not depend on them
V6_SERVICES = [(6, 8080, None), (6, 80, "2001:db8:2::2"), (6, 80, "172.31.0.2")]
HOST = 4026531001
CLIENT6, PUBLIC6, INNER6 = "2001:db8:77::9", "2001:db8:77::1", "2001:db8:aa::5"
T_IN = Tuple5(6, CLIENT6, 50000, PUBLIC6, 443)
T_NAT = Tuple5(6, CLIENT6, 50000, INNER6, 8443)
CT = CtInfo("NEW", orig=T_IN, reply=Tuple5(6, INNER6, 8443, CLIENT6, 50000))
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.forwarding": "1", "net.ipv4.conf.ens5.forwarding": "1",
           "net.ipv6.conf.all.forwarding": "1", "net.ipv6.conf.ens5.force_forwarding": "0"}
V4_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[0:0] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[0:0] -A DOCKER ! -i cni0 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.244.1.5:8443
COMMIT
"""
V6_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [4:320]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[1:80] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[1:80] -A DOCKER ! -i cni0 -p tcp -m tcp --dport 443 -j DNAT --to-destination [2001:db8:aa::5]:8443
COMMIT
"""


# ------------------------------------------------------------------------------ recorded journeys --

def v6_connections(scenario):
    return journeys.build(((r["skb"], model.step_from_dict(r["step"]), r["new"]) for r in recorded.rows(scenario)),
                          journeys.request_matcher(V6_SERVICES))


def test_recorded_healthy_ipv6_journey_is_dnated_answered_and_unnated():
    c = v6_connections("v6-healthy")[0]
    assert c.outcome == "answered" and c.key.family == 6
    syn = c.requests[0]
    assert syn.outcome == "delivered"
    dnat = next(s.ct.dnat for s in syn.steps if s.ct and s.ct.dnat)
    assert dnat == ("2001:db8:2::2", 80)
    route = next(s.route for s in syn.steps if s.point == ROUTE)
    assert route.table == 254 and route.err == 0 and route.dst == "2001:db8:2::2"
    assert [s.hook for s in syn.steps if s.point == NF and s.netns_name == "host"][:1] == ["PREROUTING"]
    reply = c.replies[0]
    assert reply.direction == "reply" and reply.steps[-1].tuple.src == "2001:db8:1::1"   # un-DNATed on the way back


def test_recorded_ipv6_forwarding_off_is_dropped_in_ip6_forward_after_the_route():
    c = v6_connections("v6-forwarding-off")[0]
    j = c.requests[0]
    assert c.outcome == "dropped" and j.drop is not None
    assert j.drop.location.startswith("ip6_forward+") and j.drop.reason == "IP_INADDRERRORS"
    points = [s.point for s in j.steps]
    assert points.index(ROUTE) < points.index(DROP) and not any(s.hook == "FORWARD" for s in j.steps)
    assert str(c.key).startswith("[2001:db8:1::2]:")


# ---------------------------------------------------------------------------------------- causes --

def st(point, **kw):
    return Step(ts_ns=0, point=point, netns=HOST, netns_name="host", **kw)


def v6_journey(*tail):
    return Connection(key=T_IN, requests=[Journey(skb=0x1000, steps=[
        st(RX, ifname="ens5", tuple=T_IN, tcp_flags="S"),
        st(NF, hook="PREROUTING", stage="first", ifname="ens5", tuple=T_IN),
        st(NF, hook="PREROUTING", stage="last", ifname="ens5", tuple=T_NAT, ct=CT),
        st(ROUTE, route=RouteInfo(254, oif="cni0", dst=INNER6, local=False)), *tail])])


def ipv6_host(sysctls=SYSCTLS, v6_rules=V6_RULES):
    return NsEvidence(name="host", inode=HOST, sysctls=dict(sysctls),
                      links=[Link("ens5", 2, "UP", True, "", "", ["10.0.0.1/24", "2001:db8:77::1/64"]),
                             Link("cni0", 3, "UP", True, "bridge", "", ["10.244.1.1/24", "2001:db8:aa::1/64"])],
                      rules=parse_iptables_save(V4_RULES), rules6=parse_iptables_save(v6_rules, 6) if v6_rules else None)


def v6_snap(h):
    return Snapshot(Target("tcp", 443, [Endpoint("10.244.1.5", 8443), Endpoint(INNER6, 8443)]), h)


def test_ipv6_forwarding_off_names_the_ipv6_sysctl_and_what_ipv4_meets():
    off = dict(SYSCTLS, **{"net.ipv6.conf.all.forwarding": "0"})
    c = v6_journey(st(DROP, location="ip6_forward+0x689", reason="IP_INADDRERRORS", tuple=T_NAT))
    f = engine.explain([c], v6_snap(ipv6_host(off)))[0]
    assert f.cause_id == "forwarding-off" and f.confidence >= 0.9
    assert f.fix == ["sysctl -w net.ipv6.conf.all.forwarding=1"]
    assert "IPv6 forwarding is off" in f.explanation and "[2001:db8:aa::5]:8443" in f.explanation
    ev = "; ".join(f.evidence)
    assert "net.ipv6.conf.all.forwarding = 0" in ev
    assert "IPv4 on host: DNAT to 10.244.1.5:8443; forwarding on" in ev    # the other family gets through


def test_ipv4_forwarding_off_does_not_explain_an_ipv6_drop():
    """IPv4 forwarding off, IPv6 on: the IPv6 drop is not forwarding-off (the IPv4 sysctl is not its own)."""
    v4off = dict(SYSCTLS, **{"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.forwarding": "0",
                             "net.ipv4.conf.ens5.forwarding": "0"})
    c = v6_journey(st(DROP, location="ip6_forward+0x689", reason="IP_INADDRERRORS", tuple=T_NAT))
    assert "forwarding-off" not in [f.cause_id for f in engine.explain([c], v6_snap(ipv6_host(v4off)))]


def test_ip6tables_forward_policy_drop_is_named_with_ip6tables_fix():
    c = v6_journey(st(NF, hook="FORWARD", stage="first", ifname="ens5", out_ifname="cni0", tuple=T_NAT),
                   st(DROP, location="nft_do_chain+0x637", reason="NETFILTER_DROP", tuple=T_NAT))
    moves = [CounterMove("filter", "FORWARD", "policy DROP", 1, 80, "DROP", policy=True, family=6),
             CounterMove("filter", "FORWARD", "policy DROP", 9, 900, "DROP", policy=True, family=4)]
    f = engine.explain([c], v6_snap(ipv6_host()), Delta([NsDelta("host", HOST, None, moves)]))[0]
    assert f.cause_id == "filter-forward-drop"
    assert f.fix == ["ip6tables -I FORWARD -d 2001:db8:aa::5 -p tcp --dport 8443 -j ACCEPT"]
    assert "ip6tables filter FORWARD: policy DROP (1 packets)" in "; ".join(f.evidence)   # its own family's counter


def test_port_published_for_ipv4_only():
    t_local = Tuple5(6, CLIENT6, 50000, PUBLIC6, 443)
    c = Connection(key=t_local, requests=[Journey(skb=1, steps=[
        st(RX, ifname="ens5", tuple=t_local), st(NF, hook="PREROUTING", stage="first", tuple=t_local),
        st(ROUTE, route=RouteInfo(255, oif="ens5", dst=PUBLIC6, local=True)),
        st(NF, hook="INPUT", stage="last", tuple=t_local),
        st(DROP, location="tcp_v6_rcv+0x35a", reason="NO_SOCKET", tuple=t_local)])])
    no_nat6 = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    ctr = NsEvidence(name="web", inode=4026532002, links=[Link("eth0", 2, "UP", True, "veth", "",
                                                               ["10.244.1.5/24", "2001:db8:aa::5/64"])])
    sn = Snapshot(Target("tcp", 443, [Endpoint("10.244.1.5", 8443)]), ipv6_host(v6_rules=no_nat6), ctr)
    f = engine.explain([c], sn)[0]
    assert f.cause_id == "family-not-published"
    assert "published for IPv4 only" in f.explanation and "IPv4 clients of the same port get through" in f.explanation
    assert f.fix[0].startswith("ip6tables -t nat -A PREROUTING -p tcp --dport 443") and "[2001:db8:aa::5]:8443" in f.fix[0]


def test_ipv4_failure_on_a_host_without_ipv6_publication_says_nothing_of_ipv6():
    t4 = Tuple5(6, "10.0.0.9", 5000, "10.0.0.1", 443)
    c = Connection(key=t4, requests=[Journey(skb=1, steps=[
        st(RX, ifname="ens5", tuple=t4), st(DROP, location="ip_error+0x94", reason="IP_INADDRERRORS", tuple=t4)])])
    for f in engine.explain([c], v6_snap(ipv6_host(v6_rules=None))):
        assert not any(e.startswith("IPv6 on") for e in f.evidence)


# ------------------------------------------------------------------------------------ kernel tests --

V6_SCENARIOS = [s.id for s in scenarios.SCENARIOS if s.family == 6]
CLI = [sys.executable, "-m", "dnattrace.cli"]


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", V6_SCENARIOS)
def test_watch_follows_each_ipv6_scenario_to_its_ground_truth(lab_instance, scenario):
    from test_watch import watch_lab
    sc = scenarios.get(scenario)
    inst = lab_instance(scenario)
    js, summary = watch_lab(inst)
    req = [j for j in js if j["direction"] == "request"]
    assert req and req[0]["family"] == 6 and summary["connections"][0]["family"] == 6, js
    steps = req[0]["steps"]
    assert ":" in steps[0]["tuple"]["src"] and steps[0]["tuple"]["dst"] == inst.target_addr
    hooks = [s.get("hook") for s in steps if s["point"] == model.NF]
    assert "PREROUTING" in hooks
    if sc.drop_function:
        drop = next(s for s in steps if s["point"] == model.DROP)
        assert sc.drop_site_matches(drop["location"]) and drop["reason"] == sc.drop_reason, drop
        assert drop["netns_name"] == inst.host_ns
    if sc.publish6:       # DNATed by ip6tables, and routed towards the bridge by the IPv6 fib lookup
        assert any(s.get("ct") and s["ct"].get("reply") and s["ct"]["reply"]["src"] == inst.container_addr
                   for s in steps), steps
        route = next(s for s in steps if s["point"] == model.ROUTE)
        assert route["route"]["dst"] == inst.container_addr and route["route"]["table"] == 254
    if sc.expect_ok:
        assert summary["connections"][0]["outcome"] == "answered"
        assert any(j["direction"] == "reply" for j in js)


@pytest.mark.kernel
def test_watch_dst_and_src_filters_take_ipv6(lab_instance):
    from test_watch import watch_lab
    inst = lab_instance("v6-healthy")
    js, _ = watch_lab(inst, extra=["--dst", inst.target_addr, "--src", "2001:db8:1::/64"])
    assert js and all(":" in j["steps"][0]["tuple"]["src"] for j in js)
    js, summary = watch_lab(inst, extra=["--src", "2001:db8:ffff::/48"])
    assert js == [] and summary["connections"] == []


@pytest.mark.kernel
def test_drops_counts_ipv6_drops_with_port_and_protocol(lab_instance):
    insts = {s: lab_instance(s) for s in V6_SCENARIOS if not scenarios.get(s).expect_ok}
    p = subprocess.Popen(CLI + ["drops", "--json", "--port", "8080", "--duration", str(slow(5))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(p.stdout.readline())["type"] == "start"
    for inst in insts.values():
        inst.traffic(timeout=0.5)
    out, err = p.communicate(timeout=slow(30))
    rows = [json.loads(l) for l in out.splitlines() if l.strip()][-1]["rows"]
    for scenario, inst in insts.items():
        sc = scenarios.get(scenario)
        mine = [r for r in rows if r["netns"] == inst.host_ns and r["function"] == sc.drop_function]
        assert mine and mine[0]["reason"] == sc.drop_reason and mine[0]["proto"] == "tcp6", (scenario, rows)
        assert mine[0]["port"] == 8080


@pytest.mark.kernel
def test_diagnose_says_what_ipv4_meets_when_ipv6_fails(lab_instance):
    from test_diagnose import diagnose
    inst = lab_instance("v6-forwarding-off")
    rc, d, err = diagnose(inst)
    assert rc == 1 and d["top_cause"] == "forwarding-off", err
    top = d["findings"][0]
    assert top["fix"] == ["nsenter --net=/run/netns/%s sysctl -w net.ipv6.conf.all.forwarding=1" % inst.host_ns]
    assert any(e.startswith("IPv4 on host: DNAT to 172.31.0.2:80; forwarding on") for e in top["evidence"]), top
    assert d["connection"]["key"]["src"] == inst.client_addr


@pytest.mark.kernel
@pytest.mark.docker
def test_docker_ipv6_healthy_and_forwarding_off_with_the_engine(lab_instance):
    """The real engine (ip6tables: true, a user-defined network with IPv6): healthy is answered over IPv6
    and diagnosed healthy; with root IPv6 forwarding off the SYN dies in ip6_forward and diagnose names
    the IPv6 sysctl. Root IPv6 forwarding and the network are put back by `lab down`."""
    from test_diagnose import diagnose
    from test_lab import require_docker_host, snapshot
    from dnattrace import lab
    from dnattrace.netns import build as net
    require_docker_host()
    before = net.sysctl_get("net.ipv6.conf.all.forwarding")
    inst = lab_instance("v6-healthy", docker=True)
    assert ":" in inst.container_addr and inst.traffic(timeout=2.0).ok
    rc, d, err = diagnose(inst, "--container", inst.container_name)
    assert rc == 0 and d["healthy"], err
    assert any(":" in b["addr"] for b in d["target"]["backends"]), d["target"]
    lab.down(inst.name)
    assert net.sysctl_get("net.ipv6.conf.all.forwarding") == before

    inst = lab_instance("v6-forwarding-off", docker=True)
    assert net.sysctl_get("net.ipv6.conf.all.forwarding") == "0"
    rc, d, err = diagnose(inst, "--container", inst.container_name)
    assert rc == 1 and d["top_cause"] == "forwarding-off", err
    drop = d["journey"]["steps"][-1]
    assert drop["location"].startswith("ip6_forward+") and drop["reason"] == "IP_INADDRERRORS"
    assert d["findings"][0]["fix"] == ["sysctl -w net.ipv6.conf.all.forwarding=1"]
    lab.down(inst.name)
    assert net.sysctl_get("net.ipv6.conf.all.forwarding") == before
    snap = snapshot(inst.name, inst.token)
    assert snap["containers"] == [] and not net.link_exists(inst.token + "o")
    assert inst.name + "-net6" not in net.run(["docker", "network", "ls", "--format", "{{.Name}}"]).stdout


@pytest.mark.kernel
def test_pcap_writes_ipv6_packets_wireshark_can_decode(lab_instance, tmp_path):
    """LINKTYPE_RAW: scapy (as Wireshark) tells IPv6 from IPv4 by the version nibble."""
    from scapy.layers.inet6 import IPv6
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap
    from test_watch import watch_lab
    inst = lab_instance("v6-forwarding-off")
    pcap = tmp_path / "v6.pcapng"
    js, _ = watch_lab(inst, timeout=1.2, extra=["--pcap", str(pcap)])
    # (other labs on this machine may use port 8080 over IPv4 meanwhile: their packets are IPv4 records)
    pkts = [p for p in rdpcap(str(pcap)) if p.haslayer(IPv6) and inst.client_addr in (p[IPv6].src, p[IPv6].dst)]
    assert pkts, "IPv6 records of this lab's client"
    syn = pkts[0]
    assert syn[IPv6].src == inst.client_addr and syn[TCP].dport == inst.target_port and syn[TCP].flags == "S"
    assert any(p[IPv6].dst == inst.container_addr and p[TCP].dport == 80 for p in pkts), "the DNATed packet"


@pytest.mark.kernel
def test_probe_over_each_family_tells_a_host_reachable_on_one_only(lab_instance):
    """ip6tables drops what iptables accepts: --probe --family 6 names the IPv6 FORWARD policy, the same
    host probed over IPv4 is healthy."""
    inst = lab_instance("v6-forward-drop")
    base = CLI + ["diagnose", "--json", "--probe", "--port", str(inst.target_port), "--netns", inst.host_ns,
                  "--timeout", str(slow(5))]
    six = subprocess.run(base + ["--family", "6"], capture_output=True, text=True, timeout=slow(60))
    d = json.loads(six.stdout.splitlines()[-1])
    assert six.returncode == 1 and d["top_cause"] == "filter-forward-drop", six.stderr
    assert d["connection"]["family"] == 6 and d["findings"][0]["fix"][0].split()[2] == "ip6tables"
    four = subprocess.run(base, capture_output=True, text=True, timeout=slow(60))
    d = json.loads(four.stdout.splitlines()[-1])
    assert four.returncode == 0 and d["healthy"] and d["connection"]["family"] == 4, four.stderr


def test_foreign_nft_chain_of_the_packets_family_only():
    """An `ip` table sees IPv4 only: for an IPv6 packet the `inet` table's drop is named, with an ip6 fix;
    ip6tables-nft's own `ip6 filter` is not foreign."""
    c = v6_journey(st(NF, hook="FORWARD", stage="first", ifname="ens5", out_ifname="cni0", tuple=T_NAT),
                   st(DROP, location="nft_do_chain+0x637", reason="NETFILTER_DROP", tuple=T_NAT))

    def chain(family, table, policy):
        return {"family": family, "table": table, "chain": "forward", "hook": "forward", "prio": 0,
                "policy": policy, "rules": []}
    h = ipv6_host(v6_rules=V6_RULES.replace("FORWARD DROP", "FORWARD ACCEPT"))
    h.nft_chains = [chain("ip", "v4only", "DROP"), chain("ip6", "filter", "ACCEPT"), chain("inet", "fw", "DROP")]
    f = engine.explain([c], v6_snap(h))[0]
    assert f.cause_id == "foreign-nft-drop" and "inet fw" in f.explanation, f
    assert f.fix[1] == "nft insert rule inet fw forward ip6 daddr 2001:db8:aa::5 tcp dport 8443 accept"
    h.nft_chains = [chain("ip", "v4only", "DROP")]
    assert "foreign-nft-drop" not in [x.cause_id for x in engine.explain([c], v6_snap(h))]
