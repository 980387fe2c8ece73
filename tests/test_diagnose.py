"""`dnattrace diagnose` and `demo` on the real kernel: every lab scenario gets its ground-truth cause."""
import contextlib
import json
import shutil
import subprocess
import sys
import time

import pytest

from dnattrace import lab
from dnattrace.diagnose import probeclient
from conftest import require, slow
from dnattrace.netns import build as net
from dnattrace.lab import attempts, scenarios

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-m", "dnattrace.cli"]




def diagnose(inst, *extra, client=True, timeout=8):
    """Run the CLI against a lab instance while its client keeps trying; returns (exit code, JSON, stderr)."""
    timeout = slow(timeout)
    args = CLI + ["diagnose", "--json", "--port", str(inst.target_port), "--proto", inst.proto,
                  "--timeout", str(timeout)] + list(extra)
    if inst.host_ns:
        args += ["--netns", inst.host_ns]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = p.stdout.readline()
    if start:
        assert json.loads(start)["type"] == "start"
    with attempts.background(inst, timeout=slow(2.0)) if client and start else contextlib.nullcontext():
        out, err = p.communicate(timeout=timeout + slow(30))
    return p.returncode, (json.loads(out) if out.strip() else None), err


@pytest.mark.guest
@pytest.mark.parametrize("scenario", [s.id for s in scenarios.SCENARIOS])
def test_each_scenario_gets_its_ground_truth(lab_instance, scenario):
    sc = scenarios.get(scenario)
    inst = lab_instance(scenario)
    rc, d, err = diagnose(inst, timeout=10 if sc.drop_delay else 8)
    assert d is not None, err
    assert d["top_cause"] == sc.cause, json.dumps(d["findings"], indent=1)
    if sc.cause == "none":
        assert rc == 0 and d["healthy"] and d["findings"] == []
    else:
        assert rc == 1
        top = d["findings"][0]
        assert top["explanation"] and top["evidence"]
        if sc.drop_function:
            assert sc.drop_site_matches(d["journey"]["steps"][-1]["location"]), d["journey"]["steps"][-1]
            assert d["journey"]["steps"][-1].get("reason", "") in (sc.drop_reason, *sc.drop_reason_alt)


EXPECTED_FIX = {
    "forwarding-off": "net.ipv4.ip_forward=1",
    "filter-forward-drop": "iptables",
    "filter-input-drop": "iptables",
    "rp-filter": "rp_filter=2",
    "conntrack-full": "nf_conntrack_max",
}


@pytest.mark.parametrize("scenario", ["forwarding-off", "forward-policy-drop", "input-drop", "rp-filter",
                                      "conntrack-full"])
def test_fix_command_is_the_right_one(lab_instance, scenario):
    sc = scenarios.get(scenario)
    rc, d, err = diagnose(lab_instance(scenario))
    fix = " ".join(d["findings"][0]["fix"])
    assert EXPECTED_FIX[sc.cause] in fix, fix


def test_fix_is_applied_only_when_asked_and_then_the_connection_works(lab_instance):
    inst = lab_instance("forwarding-off")
    before = net.sysctl_get("net.ipv4.ip_forward", inst.host_ns)
    rc, d, _ = diagnose(inst)
    assert rc == 1 and net.sysctl_get("net.ipv4.ip_forward", inst.host_ns) == before == "0", \
        "without --fix nothing changes"
    p = subprocess.Popen(CLI + ["diagnose", "--port", "8080", "--netns", inst.host_ns, "--timeout", "8",
                                "--fix", "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "Watching" in p.stdout.readline()
    c = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 3, 2.0)
    out, err = p.communicate(timeout=slow(60))
    probeclient.stop(c)
    assert "changed: " in out and "ip_forward=1" in out, out + err
    assert net.sysctl_get("net.ipv4.ip_forward", inst.host_ns) == "1"
    assert inst.traffic(attempts=1, timeout=2.0).ok


def test_probe_makes_its_own_traffic_and_cleans_up(lab_instance):
    inst = lab_instance("forwarding-off")
    before = set(net.run(["ip", "netns", "list"]).stdout.split())
    rc, d, err = diagnose(inst, "--probe", client=False)
    assert rc == 1 and d["top_cause"] == "forwarding-off", err
    assert d["journey"]["steps"][0]["tuple"]["src"].startswith("203.0.113.")
    after = set(net.run(["ip", "netns", "list"]).stdout.split())
    assert not {n for n in after - before if n.startswith("dp")}, "the probe namespace is removed"


def test_two_probes_side_by_side_judge_their_own_attempts(lab_instance):
    """Two `diagnose --probe` at once on one host: each on a network of its own (no namespace in sight
    uses it), and each judges only its own attempts, told by their tuple (it once reported the other's
    SYN)."""
    inst = lab_instance("forwarding-off")
    args = CLI + ["diagnose", "--json", "--probe", "--port", str(inst.target_port), "--netns", inst.host_ns,
                  "--timeout", str(slow(8))]
    ps = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    records = []
    for p in ps:
        out, err = p.communicate(timeout=slow(60))
        lines = [json.loads(l) for l in out.splitlines() if l.strip()]
        assert p.returncode == 1 and lines[-1]["top_cause"] == "forwarding-off", err
        records.append(lines)
    clients = [r[0]["probe_client"] for r in records]
    assert clients[0] != clients[1]
    for client, r in zip(clients, records):
        assert r[-1]["connection"]["key"]["src"] == client
        assert {s["tuple"]["src"] for s in r[-1]["journey"]["steps"] if s.get("tuple")} == {client}


def test_probe_network_overlaps_nothing_in_use():
    import ipaddress
    used = [ipaddress.ip_network("203.0.113.%d/30" % (4 * i)) for i in range(1, 63) if i != 9]
    assert probeclient.free_network(4, used) == ("203.0.113.37", "203.0.113.38", 30)
    assert probeclient.free_network(4, [ipaddress.ip_network("0.0.0.0/0")])[2] == 30, "a default route is no use"
    with pytest.raises(Exception, match="taken"):
        probeclient.free_network(4, [ipaddress.ip_network("203.0.113.0/24")])


def test_no_traffic_says_the_fault_is_before_the_host(lab_instance):
    inst = lab_instance("healthy")
    args = CLI + ["diagnose", "--port", "8080", "--netns", inst.host_ns, "--timeout", "1.5"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=slow(60))
    assert "Nothing arrived" in p.stdout and "before this host" in p.stdout, p.stdout
    assert p.returncode == 1, "nothing arriving is a fault: exit 0 only when the client got its answer"


@pytest.mark.docker
@pytest.mark.parametrize("scenario", ["healthy", "forwarding-off", "forward-policy-drop"])
def test_docker_variant(lab_instance, scenario):
    sc = scenarios.get(scenario)
    inst = lab_instance(scenario, docker=True)
    rc, d, err = diagnose(inst)
    assert d["top_cause"] == sc.cause, err + json.dumps(d["findings"], indent=1)
    if sc.cause == "forwarding-off":
        assert d["findings"][0]["fix"] == ["sysctl -w net.ipv4.ip_forward=1"]
        assert d["target"]["container"] == inst.container_name
    if sc.cause == "filter-forward-drop":
        rule = d["findings"][0]["rule"]
        assert rule["chain"] == "DOCKER-USER" and "-j DROP" in rule["rule"] and rule["packets"] >= 1, rule
        assert d["findings"][0]["fix"] and "-D DOCKER-USER" in d["findings"][0]["fix"][0]


@pytest.mark.guest
def test_demo_end_to_end(root):
    t = time.monotonic()
    p = subprocess.run(CLI + ["demo"], capture_output=True, text=True, timeout=slow(120))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Cause: IPv4 forwarding is off" in p.stdout
    assert "ip_error+" in p.stdout and "IP_INADDRERRORS" in p.stdout
    assert "sysctl -w net.ipv4.ip_forward=1" in p.stdout
    assert not [n for n in net.run(["ip", "netns", "list"]).stdout.split() if n.startswith("demo")]
    assert time.monotonic() - t < 60


@pytest.mark.parametrize("args,code,needle", [
    (["--port", "0"], 2, "--port"),
    (["--container", "no-such-container-dnattrace"], 2, "no container"),
    (["--port", "80", "--timeout", "0"], 2, "--timeout"),
])
def test_bad_input(root, args, code, needle):
    if "--container" in args:     # telling "no such container" needs an engine to ask
        require(bool(shutil.which("docker")) and subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
                "a Docker engine (docker info)")
    p = subprocess.run(CLI + ["diagnose"] + args, capture_output=True, text=True, timeout=slow(60))
    assert p.returncode == code and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# Scenarios from researched user reports: the CLI names the cause, its printed fix is applied as printed,
# and then the client's request succeeds. lab_instance tears the lab down even when this fails.
REPORTED = {
    "bridge-down": ("link-down", "ip link set"),
    "ctr-no-default-route": ("reply-no-route", "ip route add default via"),
    "nft-inet-forward-drop": ("foreign-nft-drop", "nft insert rule inet filter forward"),
    "udp-stale-conntrack": ("udp-stale-conntrack", "conntrack -D -p udp --orig-port-dst 5353"),
    "hostlocal-prerouting-only": ("not-dnated", "iptables -t nat -A OUTPUT"),
    "localhost-route-localnet": ("route-localnet", "route_localnet=1"),
    "notrack-reply": ("reply-notrack", "iptables -t raw -D PREROUTING"),
    "mtu-pmtud-blackhole": ("pmtu-blackhole", "--icmp-type fragmentation-needed -j ACCEPT"),
    "reply-policy-route": ("reply-policy-route", "ip rule add iif"),
    "bridge-port-down": ("bridge-port-down", "ip link set"),
    "ctr-to-published-no-hairpin": ("no-hairpin-dnat", "iptables -t nat -I DOCKER 1 -i"),
    "dnat-wrong-iface": ("not-dnated", "iptables -t nat -I DOCKER 1 -i"),
    "nft-forward-no-established": ("foreign-nft-reply-drop",
                                   "nft insert rule inet filter forward ct state established,related accept"),
    "legacy-forward-drop": ("chain-drop", "iptables-legacy -t filter -D FORWARD -s 198.51.100.2/32 -p tcp -j DROP"),
    "raw-prerouting-drop": ("chain-drop", "nft delete rule ip early pre handle"),
    "netdev-ingress-drop": ("chain-drop", "nft delete rule netdev edge in handle"),
}


@pytest.mark.parametrize("scenario", sorted(REPORTED))
def test_reported_scenario_cause_and_fix_through_the_cli(lab_instance, scenario):
    import shlex
    cause, needle = REPORTED[scenario]
    inst = lab_instance(scenario)
    assert not inst.traffic(attempts=1, timeout=1.0).ok
    rc, d, err = diagnose(inst, timeout=10 if scenarios.get(scenario).drop_delay else 8)
    assert d is not None, err
    assert rc == 1 and d["top_cause"] == cause, json.dumps(d["findings"], indent=1)
    top = d["findings"][0]
    fix = top["fix"]
    assert fix and needle in " ".join(fix), fix
    for cmd in fix:
        p = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (cmd, p.stderr)
    r = inst.traffic(attempts=2, timeout=2.0)
    assert r.ok, (fix, r)


def test_foreign_nft_table_is_told_apart_from_the_filter_forward_policy(lab_instance):
    """Same drop site and reason (nft_do_chain / NETFILTER_DROP on FORWARD), two owners."""
    theirs, ours = lab_instance("nft-inet-forward-drop"), lab_instance("forward-policy-drop")
    _, d1, err1 = diagnose(theirs)
    _, d2, err2 = diagnose(ours)
    for d, err in ((d1, err1), (d2, err2)):
        assert d is not None, err
        assert d["journey"]["steps"][-1]["location"].startswith("nft_do_chain+")
        assert d["journey"]["steps"][-1]["reason"] == "NETFILTER_DROP"
    assert d1["top_cause"] == "foreign-nft-drop" and d2["top_cause"] == "filter-forward-drop"
    assert "inet filter" in d1["findings"][0]["explanation"] and "iptables" in " ".join(d2["findings"][0]["fix"])


def test_not_dnated_is_told_apart_from_no_listener(lab_instance):
    """Same drop site and reason (tcp_v4_rcv / NO_SOCKET): the packet missed its DNAT vs. was DNATed."""
    _, d1, err1 = diagnose(lab_instance("hostlocal-prerouting-only"))
    _, d2, err2 = diagnose(lab_instance("no-listener"))
    assert d1 is not None and d2 is not None, err1 + err2
    assert d1["top_cause"] == "not-dnated" and d2["top_cause"] == "no-listener"
    assert "not reached from nat OUTPUT" in d1["findings"][0]["explanation"]


# Scenarios that share a drop signature (function and reason) with another one: each gets its own cause,
# and the words that tell them apart. (scenario, what its top finding must say)
SHARED = {
    "neigh_invalidate/NEIGH_FAILED": [("neigh-failed", "answers ARP"),
                                      ("reply-policy-route", "table 100"),
                                      ("bridge-port-down", "administratively DOWN")],
    "tcp_v4_rcv/NO_SOCKET (host)": [("hostlocal-prerouting-only", "not reached from nat OUTPUT"),
                                    ("dnat-wrong-iface", "the packet came in on"),
                                    ("ctr-to-published-no-hairpin", "! -i"),
                                    ("no-listener", "no socket listens")],
    "nft_do_chain/NETFILTER_DROP": [("forward-policy-drop", "DROP policy"),
                                    ("nft-inet-forward-drop", "inet filter"),
                                    ("nft-forward-no-established", "established,related")],
}


@pytest.mark.parametrize("signature", sorted(SHARED))
def test_shared_signatures_are_told_apart(lab_instance, signature):
    seen = {}
    for scenario, words in SHARED[signature]:
        sc = scenarios.get(scenario)
        _, d, err = diagnose(lab_instance(scenario), timeout=10 if sc.drop_delay else 8)
        assert d is not None, err
        last = d["journey"]["steps"][-1]
        assert sc.drop_site_matches(last["location"]), last
        top = d["findings"][0]
        assert d["top_cause"] == sc.cause, json.dumps(d["findings"], indent=1)
        text = " ".join([top["explanation"]] + top["evidence"] + (top.get("fix") or []))
        assert words in text, (scenario, text)
        seen[scenario] = (d["journey"].get("direction"), d["top_cause"], tuple(top.get("fix") or ()))
    # not-dnated has two variants here (nat OUTPUT not reaching the DNAT; a DNAT for another interface):
    # one cause, told apart by why and by the fix
    assert len({(c, fix) for _, c, fix in seen.values()}) == len(seen), seen
    if "reply-policy-route" in seen:      # the failing packet is the reply there, the request elsewhere
        assert seen["reply-policy-route"][0] == "reply" and seen["neigh-failed"][0] == "request", seen
    if "nft-forward-no-established" in seen:
        assert seen["nft-forward-no-established"][0] == "reply" and seen["nft-inet-forward-drop"][0] == "request"
