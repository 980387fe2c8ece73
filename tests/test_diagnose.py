"""`dnattrace diagnose` and `demo` on the real kernel: every lab scenario gets its ground-truth cause."""
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest

from dnattrace import lab
from dnattrace.diagnose import probeclient
from conftest import require, slow
from dnattrace.netns import build as net
from dnattrace.lab import scenarios

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-m", "dnattrace.cli"]




def diagnose(inst, *extra, client=True, timeout=8):
    """Run the CLI against a lab instance while its client keeps trying; returns (exit code, JSON, stderr)."""
    timeout = slow(timeout)
    args = CLI + ["diagnose", "--json", "--port", str(inst.target_port), "--timeout", str(timeout)] + list(extra)
    if inst.host_ns:
        args += ["--netns", inst.host_ns]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = []
    start = p.stdout.readline()
    if client and start:
        assert json.loads(start)["type"] == "start"
        procs.append(probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 2, slow(2.0)))
    try:
        out, err = p.communicate(timeout=timeout + slow(30))
    finally:
        for c in procs:
            probeclient.stop(c)
    return p.returncode, (json.loads(out) if out.strip() else None), err


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
            assert d["journey"]["steps"][-1]["reason"] == sc.drop_reason


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
    (["--port", "0"], 2, "out of range"),
    (["--container", "no-such-container-dnattrace"], 2, "no container"),
    (["--port", "80", "--timeout", "0"], 2, "--timeout"),
])
def test_bad_input(root, args, code, needle):
    if "--container" in args:     # telling "no such container" needs an engine to ask
        require(bool(shutil.which("docker")) and subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
                "a Docker engine (docker info)")
    p = subprocess.run(CLI + ["diagnose"] + args, capture_output=True, text=True, timeout=slow(60))
    assert p.returncode == code and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
