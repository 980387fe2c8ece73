"""The lab: catalogue and rule layout (unit), every scenario's life cycle on the real kernel, its ground
truth re-measured with an independent drop counter (bpftrace on skb:kfree_skb, attributing each drop to
its network namespace), and the real-Docker variant."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dnattrace.kernel.kallsyms import base_name
from click.testing import CliRunner

from conftest import require
from dnattrace import lab
from dnattrace.errors import UsageError
from dnattrace.lab import cli, manage, scenarios, state, topology
from dnattrace.netns import build as net

KNOWN_CAUSES = {"none", "forwarding-off", "filter-forward-drop", "no-listener", "rp-filter", "conntrack-full",
                "filter-input-drop", "neigh-failed", "link-down", "reply-no-route", "reply-notrack",
                "foreign-nft-drop", "udp-stale-conntrack", "not-dnated", "route-localnet", "pmtu-blackhole",
                "reply-policy-route", "bridge-port-down", "no-hairpin-dnat", "foreign-nft-reply-drop",
                "family-not-published"}
KNOWN_CAUSES |= {"chain-drop", "nat-skipped", "bpf-prog-drop"}     # the catalogue's later causes
# What the client sees when it is not a timeout (measured with the lab's client).
CLIENT_REASON = {"no-listener": "refused", "hostlocal-prerouting-only": "refused", "bridge-down": "unreachable",
                 "ctr-to-published-no-hairpin": "refused", "dnat-wrong-iface": "refused", "v6-not-published": "refused",
                 "firewalld-forward-reject": "unreachable", "prerouting-notrack": "refused"}
ROOT_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding", "net.ipv4.conf.default.forwarding",
                "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.netfilter.nf_conntrack_max")
LAB_ADDRS = re.compile(r"198\.51\.100\.|172\.31\.")


# ---------------------------------------------------------------------------------------------- unit --

def test_catalogue_is_complete_and_consistent():
    ids = [s.id for s in scenarios.SCENARIOS]
    assert len(ids) == len(set(ids))
    assert {"healthy", "forwarding-off", "forward-policy-drop", "no-listener", "rp-filter", "conntrack-full",
            "input-drop"} <= set(ids)
    for s in scenarios.SCENARIOS:
        assert s.cause in KNOWN_CAUSES
        assert s.expect_ok == (s.cause == "none")
        assert (s.drop_function is None) == (s.drop_reason is None) == (s.drop_ns is None)
        assert s.drop_function is None or not s.expect_ok     # a broken one may free nothing (reply never built)
        assert s.drop_ns in (None, "host", "container", "client")
        # the IPv6 ones are the cases issue 16 asks for, not user reports
        assert s in scenarios.SCENARIOS[:8] or s.family == 6 or "https://" in s.description, \
            "a reported scenario cites its source"
    assert {s.id for s in scenarios.SCENARIOS if s.docker} >= {"healthy", "forwarding-off"}
    assert scenarios.get("forwarding-off").drop_function == "ip_error"
    with pytest.raises(UsageError):
        scenarios.get("no-such-scenario")


def test_rules_follow_dockers_layout():
    rules = topology.docker_rules("xbr", "172.31.0.2", "172.31.0.2").splitlines()
    for line in ("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                 "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
                 "-A POSTROUTING -s 172.31.0.0/16 ! -o xbr -j MASQUERADE",
                 "-A DOCKER ! -i xbr -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.31.0.2:80",
                 ":FORWARD DROP [0:0]", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
                 "-A FORWARD -o xbr -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                 "-A DOCKER -d 172.31.0.2/32 ! -i xbr -o xbr -p tcp -m tcp --dport 80 -j ACCEPT",
                 "-A DOCKER-USER -j RETURN"):
        assert line in rules
    assert rules.index("-A FORWARD -j DOCKER-USER") < rules.index("-A FORWARD -j DOCKER-ISOLATION-STAGE-1")
    broken = topology.docker_rules("xbr", "172.31.0.2", "172.31.0.2", forward_accept=False, input_drop=True)
    assert "-j ACCEPT" in broken and "--dport 80 -j ACCEPT" not in broken
    assert "-A INPUT -p tcp -m tcp --dport 9090 -j DROP" in broken.splitlines()


def test_cli_list_json_and_bad_input():
    r = CliRunner().invoke(cli.lab, ["list", "--json"])
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [row["id"] for row in rows] == [s.id for s in scenarios.SCENARIOS]
    assert CliRunner().invoke(cli.lab, ["list"]).output.count("\n") == len(rows) + 2
    from dnattrace.cli import main
    assert main(["lab", "up", "no-such-scenario"]) == 2
    assert main(["lab", "up", "input-drop", "--docker"]) == 2
    assert main(["lab", "up", "healthy", "--prefix", "bad name!"]) == 2


# ------------------------------------------------------------------------------------------ helpers --

def snapshot(inst_name, token):
    """What the lab could leave behind in the root namespace, restricted to this instance's names and the
    lab's addresses (other sessions may be making their own namespaces meanwhile)."""
    netns = sorted(l for l in net.run(["ip", "netns", "list"]).stdout.splitlines() if l.startswith(inst_name))
    links = sorted(l for l in net.run(["ip", "-o", "link"]).stdout.splitlines() if token in l)
    rules = sorted(re.sub(r"\[\d+:\d+\]", "", l) for l in net.run(["iptables-save"]).stdout.splitlines()
                   if not l.startswith("#") and (LAB_ADDRS.search(l) or token in l))
    ctrs = net.run(["docker", "ps", "-a", "--format", "{{.Names}}"], check=False).stdout.split()
    ctrs = sorted(c for c in ctrs if c.startswith(inst_name))
    sysctls = {k: net.sysctl_get(k) for k in ROOT_SYSCTLS}
    return dict(netns=netns, links=links, rules=rules, containers=ctrs, sysctls=sysctls,
                state=os.path.exists(state.state_path(inst_name)))




# ------------------------------------------------------------------------------- kernel: life cycle --

@pytest.mark.kernel
@pytest.mark.parametrize("scenario_id", [s.id for s in scenarios.SCENARIOS])
def test_scenario_up_traffic_down_leaves_nothing(root, scenario_id):
    sc = scenarios.get(scenario_id)
    name = net.unique("tl")
    before = snapshot(name, name)
    inst = lab.up(scenario_id, prefix=name)
    try:
        assert lab.get(name).scenario == scenario_id
        assert net.netns_exists(inst.client_ns) and net.netns_exists(inst.host_ns)
        with pytest.raises(UsageError, match="already up"):
            lab.up(scenario_id, prefix=name)
        r = inst.traffic(attempts=1, timeout=1.0 if not sc.expect_ok else 2.0)
        assert r.ok == sc.expect_ok, r
        if scenario_id in CLIENT_REASON:
            assert r.reason == CLIENT_REASON[scenario_id], r
        elif not sc.expect_ok:
            assert r.reason == "timeout"
        else:
            assert r.attempts[0]["status"].startswith("HTTP/1")
        assert snapshot(name, name) != before
    finally:
        assert lab.down(name) is True
    assert snapshot(name, name) == before
    assert lab.down(name) is False                       # idempotent


@pytest.mark.kernel
def test_syn_burst_is_bounded_and_reaches_the_container(lab_instance):
    inst = lab_instance("healthy")
    t0 = time.monotonic()
    out = inst.syn_burst(count=50, timeout=0.5)
    # busybox httpd has a small accept backlog: some SYNs wait for a retransmission, but many get through
    assert out["sent"] == 50 and 0 < out["connected"] <= 50
    assert out["connected"] + out["pending"] <= 50
    assert time.monotonic() - t0 < 5


@pytest.mark.kernel
def test_cli_round_trip(root):
    from dnattrace.cli import main
    name = net.unique("tl")
    assert main(["lab", "up", "forwarding-off", "--prefix", name]) == 0
    try:
        assert main(["lab", "up", "forwarding-off", "--prefix", name]) == 2       # already up
        assert main(["lab", "traffic", name, "--timeout", "0.5"]) == 1            # fails: forwarding is off
        r = CliRunner().invoke(cli.lab, ["status", "--json"])
        assert name in [json.loads(l)["name"] for l in r.output.splitlines()]
    finally:
        assert main(["lab", "down", name]) == 0
    assert main(["lab", "traffic", name]) == 2


# ----------------------------------------------------------------------------- kernel: ground truth --

def reason_names():
    """Drop reason numbers -> names, from the tracepoint's own format file (not from dnattrace)."""
    fmt = open("/sys/kernel/tracing/events/skb/kfree_skb/format").read()
    return {int(n): s for n, s in re.findall(r'\{ (\d+), "(\w+)" \}', fmt)}


# IPv4 and IPv6 (ethertypes 0x0800, 0x86dd). A locally generated packet dropped before it has a device (the OUTPUT path) is attributed through its
# socket's namespace.
BPFTRACE = ('tracepoint:skb:kfree_skb /args->protocol == 2048 || args->protocol == 34525/ { $s = (struct sk_buff *)args->skbaddr; '
            '$ino = (uint64)0; if ((uint64)$s->dev != 0) { $ino = $s->dev->nd_net.net->ns.inum; } '
            'else if ((uint64)$s->sk != 0) { $ino = $s->sk->__sk_common.skc_net.net->ns.inum; } '
            '@[ksym(args->location), args->reason, $ino] = count(); }')


class DropCounter:
    """bpftrace counting kfree_skb per (function, reason, netns inode): independent of dnattrace's probes."""

    def __enter__(self):
        require(shutil.which("bpftrace"), "bpftrace")
        self.proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.lines = []
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("Attaching"):
                    ready.set()
            ready.set()
        self.reader = threading.Thread(target=reader, daemon=True)
        self.reader.start()
        assert ready.wait(30) and self.proc.poll() is None, "bpftrace did not attach: %s" % self.lines
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        # bpftrace prints its maps on SIGINT, after detaching (seconds on a loaded machine); the counts are
        # read once the reader has taken every line (joined, not a guessed pause: two suite runs read
        # nothing at all after 0.1 s)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(30)
        names = reason_names()
        self.counts = {}
        for fn, reason, ino, n in re.findall(r"@\[([\w.]+), (\d+), (\d+)\]: (\d+)", "".join(self.lines)):
            key = (base_name(fn), names.get(int(reason), reason), int(ino))    # without .constprop.0 and the like
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def drops(self, ino):
        return {(fn, reason): n for (fn, reason, i), n in self.counts.items() if i == ino}


def ns_inode(path_or_name):
    return os.stat(path_or_name if path_or_name.startswith("/") else net.netns_path(path_or_name)).st_ino


def role_inode(inst, role):
    if role == "container":
        return ns_inode(inst.container_ns)
    if role == "client":
        return ns_inode(inst.client_ns)
    return ns_inode(inst.host_ns) if inst.host_ns else os.stat("/proc/self/ns/net").st_ino  # the tests run in the root ns


@pytest.mark.kernel
def test_ground_truth_drops_measured_with_bpftrace(lab_instance):
    """All namespace scenarios at once (they share nothing), one bpftrace run, drops told apart by netns."""
    insts = [lab_instance(s.id) for s in scenarios.SCENARIOS]
    results = {}
    with DropCounter() as counter:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i.name, i.traffic(timeout=2.0)))
                   for i in insts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        time.sleep(max(s.drop_delay for s in scenarios.SCENARIOS) - 1.5)
    failures = []
    for inst in insts:
        sc = scenarios.get(inst.scenario)
        assert results[inst.name].ok == sc.expect_ok, (inst.scenario, results[inst.name])
        if sc.expect_ok:
            bad = {(s.drop_function, s.drop_reason) for s in scenarios.SCENARIOS if s.drop_function
                   and s.drop_ns == "host"}
            seen = counter.drops(role_inode(inst, "host"))
            if bad & set(seen):
                failures.append("healthy had drops %s in the host namespace" % (bad & set(seen)))
            continue
        if sc.drop_function is None:     # broken without any drop: none of the lab's drop sites anywhere
            bad = {(s.drop_function, s.drop_reason) for s in scenarios.SCENARIOS if s.drop_function}
            seen = {k for role in ("client", "host", "container") for k in counter.drops(role_inode(inst, role))}
            if bad & seen:
                failures.append("%s: expected no drop, saw %s" % (sc.id, bad & seen))
            continue
        seen = counter.drops(role_inode(inst, sc.drop_ns))
        if seen.get((sc.drop_function, sc.drop_reason), 0) < 1:
            failures.append("%s: expected %s/%s in the %s netns, saw %s" % (sc.id, sc.drop_function,
                                                                          sc.drop_reason, sc.drop_ns, seen))
    assert not failures, failures + ["bpftrace exit %s, %d lines, %d counts" % (
        counter.proc.returncode, len(counter.lines), len(counter.counts))]


# ------------------------------------------------------------------------------------- kernel: docker --

def docker_ready():
    return shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def require_docker_host():
    """A Docker engine, and root forwarding on as dockerd leaves it; returns that forwarding value."""
    require(docker_ready(), "docker engine")
    fwd = net.sysctl_get("net.ipv4.ip_forward")
    require(fwd == "1", "root net.ipv4.ip_forward=1 (as dockerd sets it)")
    return fwd


@pytest.mark.kernel
@pytest.mark.docker
def test_docker_healthy_and_forwarding_off(lab_instance):
    fwd = require_docker_host()
    inst = lab_instance("healthy", docker=True)
    name, token = inst.name, inst.token
    assert inst.host_ns is None and inst.container_ns.startswith("/proc/")
    r = inst.traffic(timeout=2.0)
    assert r.ok, r
    lab.down(name)
    assert snapshot(name, token)["containers"] == [] and not net.link_exists(token + "o")

    inst = lab_instance("forwarding-off", docker=True)
    assert net.sysctl_get("net.ipv4.ip_forward") == "0"
    with DropCounter() as counter:
        r = inst.traffic(timeout=1.0)
    assert not r.ok and r.reason == "timeout"
    assert counter.drops(role_inode(inst, "host")).get(("ip_error", "IP_INADDRERRORS"), 0) >= 1, counter.counts
    lab.down(inst.name)
    assert net.sysctl_get("net.ipv4.ip_forward") == fwd
    assert snapshot(inst.name, inst.token)["containers"] == [] and not net.link_exists(inst.token + "o")


@pytest.mark.kernel
@pytest.mark.docker
def test_docker_failure_half_way_and_crash_restore_forwarding(root):
    fwd = require_docker_host()
    # Half way: the published port is taken, so `docker run` fails after forwarding was switched off.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("0.0.0.0", 8080))
    blocker.listen(1)
    name = net.unique("tl")
    try:
        with pytest.raises(manage.LabError, match="undone"):
            lab.up("forwarding-off", prefix=name, docker=True)
    finally:
        blocker.close()
    assert net.sysctl_get("net.ipv4.ip_forward") == fwd
    snap = snapshot(name, name)
    assert snap["netns"] == [] and snap["links"] == [] and snap["containers"] == [] and not snap["state"]

    # Crash: the process dies (SIGKILL) with the instance up; `down --all` repairs the leftover.
    name = net.unique("tl")
    code = ("import os, signal; from dnattrace import lab; lab.up('forwarding-off', prefix=%r, docker=True); "
            "os.kill(os.getpid(), signal.SIGKILL)" % name)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    try:
        assert p.returncode == -signal.SIGKILL, p.stderr
        assert net.sysctl_get("net.ipv4.ip_forward") == "0"
    finally:
        assert lab.down_all(match=name) == [name]
    assert net.sysctl_get("net.ipv4.ip_forward") == fwd
    snap = snapshot(name, name)
    assert snap["netns"] == [] and snap["containers"] == [] and not snap["state"]


@pytest.mark.kernel
@pytest.mark.docker
def test_docker_user_rule_variant_is_removed_by_down(lab_instance):
    require_docker_host()
    before = net.run(["iptables-save", "-t", "filter"]).stdout
    inst = lab_instance("forward-policy-drop", docker=True)
    user_rules = [l for l in net.run(["iptables-save", "-t", "filter"]).stdout.splitlines()
                  if l.startswith("-A DOCKER-USER") and inst.container_addr in l]
    assert user_rules and user_rules[0].endswith("-j DROP"), "a DOCKER-USER rule drops traffic to the container"
    r = inst.traffic(timeout=1.0)
    assert not r.ok and r.reason == "timeout"
    lab.down(inst.name)
    after = net.run(["iptables-save", "-t", "filter"]).stdout
    strip = lambda text: sorted(re.sub(r"\[\d+:\d+\]", "", l) for l in text.splitlines() if not l.startswith("#"))
    assert strip(after) == strip(before), "down removes the DOCKER-USER rule and nothing else changes"
