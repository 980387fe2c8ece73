"""The evidence readers on the real kernel, in namespaces made for each test: client <-> router <-> server
(198.51.100.0/24 outside, 203.0.113.0/24 inside). Packets are real and few (a handful of SYNs/datagrams
with short timeouts); everything is removed afterwards by the netns fixture.
"""
import errno
import socket
import subprocess
import time

import pytest

from dnattrace.errors import UsageError
from dnattrace.netns import build as net
from dnattrace.evidence import conntrack, firewall, links, snmp, sockets, sysctl
from dnattrace.netns import enter as ns
from dnattrace.evidence.snapshot import Snapshot, diff
from dnattrace.target import Endpoint, Target

CLIENT, ROUTER_OUT, ROUTER_IN, SERVER = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.2"


@pytest.fixture
def topo(netns):
    """c (client) -- r (router, forwarding on) -- s (server). Returns names, paths and device names."""
    c, r, s = netns("c"), netns("r"), netns("s")
    rc, cr, rs, sr = (net.unique("v") for _ in range(4))
    net.add_veth(rc, cr, r, c)
    net.add_veth(rs, sr, r, s)
    net.add_addr(cr, CLIENT + "/24", c)
    net.add_addr(rc, ROUTER_OUT + "/24", r)
    net.add_addr(rs, ROUTER_IN + "/24", r)
    net.add_addr(sr, SERVER + "/24", s)
    net.add_route("default", via=ROUTER_OUT, netns=c)
    net.add_route("default", via=ROUTER_IN, netns=s)
    net.sysctl_set("net.ipv4.ip_forward", 1, r)
    for name in (c, r, s):
        net.sysctl_set("net.ipv4.conf.all.rp_filter", 0, name)
    return {"c": net.netns_path(c), "r": net.netns_path(r), "s": net.netns_path(s), "rname": r,
            "rc": rc, "rs": rs}


def syn(netns_path, dst, port, timeout=0.3):
    """One TCP connection attempt from inside a namespace (the socket is made there, used from here)."""
    with ns.entered(netns_path):
        sk = socket.socket()
    try:
        sk.settimeout(timeout)
        return sk.connect_ex((dst, port))
    except OSError as e:
        return e.errno
    finally:
        sk.close()


def test_sysctls_are_read_per_namespace(topo):
    net.sysctl_set("net.ipv4.conf.%s.forwarding" % topo["rc"], 0, topo["rname"])
    vr = sysctl.read_all(topo["r"])
    vs = sysctl.read_all(topo["s"])
    assert vr["net.ipv4.ip_forward"] == "1"
    assert vr[sysctl.conf_key(topo["rc"], "forwarding")] == "0"
    assert vr[sysctl.conf_key(topo["rs"], "forwarding")] == "1"
    assert sysctl.forwarding_on(vr, topo["rc"]) is False and sysctl.forwarding_on(vr, topo["rs"]) is True
    assert vs["net.ipv4.ip_forward"] == net.sysctl_get("net.ipv4.ip_forward", net_name(topo["s"]))
    assert sysctl.conf_key(topo["rc"], "forwarding") not in vs
    assert sysctl.read("net.ipv4.conf.%s.rp_filter" % topo["rs"], topo["r"]) == \
        net.sysctl_get("net.ipv4.conf.%s.rp_filter" % topo["rs"], topo["rname"])
    assert sysctl.read("net.ipv4.no_such_key", topo["r"]) is None


def net_name(path):
    return path.rsplit("/", 1)[1]


def test_route_lookup_returns_the_kernels_error_when_forwarding_is_off(topo):
    ok = links.route_get(SERVER, iif=topo["rc"], src=CLIENT, netns=topo["r"])
    assert ok.err == 0 and ok.oif == topo["rs"] and ok.type == "unicast"
    net.sysctl_set("net.ipv4.conf.%s.forwarding" % topo["rc"], 0, topo["rname"])
    off = links.route_get(SERVER, iif=topo["rc"], src=CLIENT, netns=topo["r"])
    assert off.err == errno.EHOSTUNREACH, off
    local = links.route_get(ROUTER_IN, iif=topo["rc"], src=CLIENT, netns=topo["r"])
    assert local.err == 0 and local.local
    assert links.route_get("192.0.2.77", netns=topo["s"]).err == 0     # s has a default route
    net.run(["ip", "route", "del", "default"], netns=net_name(topo["s"]))
    gone = links.route_get(CLIENT, netns=topo["s"])
    assert gone.err == errno.ENETUNREACH
    names = {l.name: l for l in links.links(topo["r"])}
    assert names[topo["rc"]].kind == "veth" and ROUTER_OUT + "/24" in names[topo["rc"]].addresses


def test_neighbour_that_does_not_answer(topo):
    with ns.entered(topo["r"]):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"x", ("203.0.113.99", 9))
    finally:
        u.close()
    n = links.neighbour("203.0.113.99", topo["r"])
    assert n is not None and n["dev"] == topo["rs"]
    assert n["state"] in ("INCOMPLETE", "FAILED")
    assert links.neighbour("203.0.113.99", topo["c"]) is None


def iptables(topo, *args):
    net.run(["iptables"] + list(args), netns=topo["rname"])


def test_drop_rule_counter_delta_names_the_rule(topo):
    iptables(topo, "-A", "FORWARD", "-p", "tcp", "--dport", "9", "-j", "DROP")
    before = firewall.read_iptables(topo["r"])
    for _ in range(3):
        assert syn(topo["c"], SERVER, 9) != 0
    after = firewall.read_iptables(topo["r"])
    moves = firewall.counter_delta(before, after)
    drops = [m for m in moves if m.target == "DROP"]
    assert len(drops) == 1
    m = drops[0]
    assert (m.table, m.chain, m.rule) == ("filter", "FORWARD", "-A FORWARD -p tcp -m tcp --dport 9 -j DROP")
    assert m.packets == 3
    assert firewall.fix_delete(m) == "iptables -t filter -D FORWARD -p tcp -m tcp --dport 9 -j DROP"


def test_policy_counter_delta_and_snapshot_diff(topo):
    iptables(topo, "-P", "FORWARD", "DROP")
    target = Target("tcp", 9, [Endpoint(SERVER, 9)])
    before = Snapshot.take(host_netns=topo["r"], container_netns=topo["s"], target=target,
                           ingress=topo["rc"], client=CLIENT)
    assert before.host.errors == [] and before.container.errors == []
    for _ in range(2):
        syn(topo["c"], SERVER, 9)
    after = Snapshot.take(host_netns=topo["r"], container_netns=topo["s"], target=target, counters_only=True)
    d = diff(before, after)
    moves = d.by_inode(before.host.inode).moves
    assert [(m.chain, m.rule, m.packets) for m in moves if m.policy] == [("FORWARD", "policy DROP", 2)]
    assert before.host.lookup(SERVER).err == 0
    assert before.host.sysctls["net.ipv4.ip_forward"] == "1"


def test_dnat_target_resolution(topo):
    iptables(topo, "-t", "nat", "-N", "DOCKER")
    iptables(topo, "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER")
    iptables(topo, "-t", "nat", "-A", "DOCKER", "!", "-i", topo["rs"], "-p", "tcp", "-m", "tcp", "--dport", "8080",
             "-j", "DNAT", "--to-destination", SERVER + ":80")
    iptables(topo, "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5353", "-j", "DNAT",
             "--to-destination", SERVER)
    rules = firewall.read_iptables(topo["r"])
    t = firewall.dnat_targets(rules, 8080)
    assert [(x.port, x.addr, x.target_port, x.chain) for x in t] == [(8080, SERVER, 80, "DOCKER")]
    assert "--to-destination %s:80" % SERVER in t[0].rule
    assert firewall.dnat_targets(rules, 8081) == []
    assert firewall.dnat_targets(rules, 8080, "udp") == []
    u = firewall.dnat_targets(rules, 5353, "udp")
    assert [(x.addr, x.target_port, x.chain) for x in u] == [(SERVER, 5353, "PREROUTING")]


def test_listeners_in_a_namespace(topo):
    with ns.entered(topo["s"]):
        lsk = socket.socket()
    try:
        lsk.bind(("0.0.0.0", 8080))
        lsk.listen()
        found = sockets.listeners(8080, netns=topo["s"])
        assert [(l.addr, l.port) for l in found] == [("0.0.0.0", 8080)]
        assert sockets.listeners(8080, netns=topo["c"]) == []
        assert syn(topo["c"], SERVER, 8080, timeout=2) == 0
    finally:
        lsk.close()
    assert sockets.listeners(8080, netns=topo["s"]) == []


def test_conntrack_count_and_snmp_counters(topo):
    iptables(topo, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    before = snmp.counters(topo["r"])
    for port in (7001, 7002, 7003):
        with ns.entered(topo["c"]):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.sendto(b"x", (SERVER, port))
        finally:
            u.close()
    deadline = time.time() + 2
    while time.time() < deadline and snmp.counters(topo["r"]).get("IpForwDatagrams", 0) < \
            before.get("IpForwDatagrams", 0) + 3:
        time.sleep(0.05)
    st = conntrack.stats(topo["r"])
    tool = int(subprocess.run(["nsenter", "--net=" + topo["r"], "conntrack", "-C"], capture_output=True,
                              text=True, check=True).stdout.strip())
    assert st["count"] == tool and st["count"] >= 3
    assert st["max"] > 0 and not conntrack.is_full(st)
    assert snmp.delta(before, snmp.counters(topo["r"])).get("IpForwDatagrams", 0) >= 3


def test_a_namespace_that_is_not_there_is_one_clear_error():
    with pytest.raises(UsageError, match="not there"):
        sysctl.read_all("/run/netns/dnattrace-no-such-ns")
    with pytest.raises(UsageError, match="not there"):
        firewall.read_iptables("/run/netns/dnattrace-no-such-ns")


def test_real_evidence_alone_points_at_forwarding_off(topo):
    """No journey: the snapshot of a router with forwarding off on its ingress is enough for a suspicion."""
    from dnattrace.diagnose import engine
    net.sysctl_set("net.ipv4.conf.all.forwarding", 0, topo["rname"])
    snap = Snapshot.take(host_netns=topo["r"], target=Target("tcp", 8080, [Endpoint(SERVER, 80)]),
                         ingress=topo["rc"], client=CLIENT)
    assert snap.host.lookup(SERVER).err == errno.EHOSTUNREACH
    found = engine.explain([], snap)
    assert found[0].cause_id == engine.NOTHING_ARRIVED      # no packet was followed: said first
    found = found[1:]
    assert found[0].cause_id == "forwarding-off"
    assert found[0].fix == ["nsenter --net=%s sysctl -w net.ipv4.ip_forward=1" % topo["r"]]


def test_real_counter_delta_alone_names_the_forward_rule(topo):
    from dnattrace.diagnose import engine
    iptables(topo, "-N", "DOCKER-USER")
    iptables(topo, "-A", "FORWARD", "-j", "DOCKER-USER")
    iptables(topo, "-A", "DOCKER-USER", "-s", CLIENT, "-j", "DROP")
    target = Target("tcp", 9, [Endpoint(SERVER, 9)])
    before = Snapshot.take(host_netns=topo["r"], target=target)
    syn(topo["c"], SERVER, 9)
    d = diff(before, Snapshot.take(host_netns=topo["r"], target=target, counters_only=True))
    f = engine.explain([], before, d)[1]     # after "nothing arrived": no packet was followed
    assert f.cause_id == "filter-forward-drop"
    assert f.rule == {"table": "filter", "chain": "DOCKER-USER", "rule": "-A DOCKER-USER -s %s/32 -j DROP" % CLIENT,
                      "packets": 1}


def test_native_nftables_counters(topo):
    script = ("add table ip dtt\n"
              "add chain ip dtt fw { type filter hook forward priority 0; policy accept; }\n"
              "add rule ip dtt fw tcp dport 9 counter drop\n")
    net.run(["nft", "-f", "-"], netns=topo["rname"], input=script)
    before = firewall.read_nft(topo["r"])
    for _ in range(2):
        syn(topo["c"], SERVER, 9)
    moves = firewall.counter_delta(before, firewall.read_nft(topo["r"]))
    assert [(m.table, m.chain, m.target, m.packets) for m in moves] == [("ip dtt", "fw", "DROP", 2)]
