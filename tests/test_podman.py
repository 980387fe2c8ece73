"""Podman as well as Docker, with the real rootful Podman (netavark and its own iptables chains): `lab up
--podman` builds the healthy and forwarding-off cases, `diagnose --container NAME` resolves the Podman
container through `podman inspect` and names the cause, `lab down` removes the container, its network and
netavark's rules for it, and puts root ip_forward back, even when the test fails."""
import contextlib
import json
import shutil
import subprocess
import sys

import pytest

from conftest import require, slow
from dnattrace.evidence import docker_state, podman_state
from dnattrace.lab import attempts, manage, podman_lab, scenarios
from dnattrace.watch import resolve
from dnattrace.netns import build as net

pytestmark = [pytest.mark.kernel, pytest.mark.podman]

CLI = [sys.executable, "-m", "dnattrace.cli"]


def _podman_works():
    if not shutil.which("podman"):
        return "rootful Podman (apt-get install podman): no podman on PATH"
    p = subprocess.run(["podman", "info", "--format", "json"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return "rootful Podman: `podman info` failed: %s" % p.stderr.strip()[-300:]
    return None


@pytest.fixture
def podman_instance(root):
    missing = _podman_works()
    require(missing is None, missing)
    forward = net.sysctl_get("net.ipv4.ip_forward")
    made = []

    def up(scenario_id):
        inst = manage.up(scenario_id, prefix=net.unique("tp"), podman=True)
        made.append(inst)
        return inst

    try:
        yield up
    finally:
        for inst in made:
            manage.down(inst.name)
        if net.sysctl_get("net.ipv4.ip_forward") != forward:       # never leave the host changed
            net.sysctl_set("net.ipv4.ip_forward", forward)
            pytest.fail("lab down did not restore net.ipv4.ip_forward=%s" % forward)
        for inst in made:
            assert_gone(inst)


def assert_gone(inst):
    netname = podman_lab.network_name(inst)
    assert subprocess.run(["podman", "container", "exists", inst.container_name], timeout=60).returncode == 1
    assert subprocess.run(["podman", "network", "exists", netname], timeout=60).returncode == 1
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=60).stdout
    assert inst.container_addr not in rules and (not inst.bridge or inst.bridge not in rules), \
        [line for line in rules.splitlines() if inst.container_addr in line or (inst.bridge and inst.bridge in line)]
    assert inst.client_ns not in net.run(["ip", "netns", "list"]).stdout


def diagnose_container(inst, timeout=8):
    timeout = slow(timeout)
    p = subprocess.Popen(CLI + ["diagnose", "--json", "--container", inst.container_name, "--timeout", str(timeout)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = p.stdout.readline()
    assert start and json.loads(start)["type"] == "start", p.stderr.read() if not start else start
    with attempts.background(inst, timeout=slow(2.0)):
        out, err = p.communicate(timeout=timeout + slow(30))
    return p.returncode, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("scenario", ["healthy", "forwarding-off"])
def test_podman_variant(podman_instance, scenario):
    sc = scenarios.get(scenario)
    inst = podman_instance(scenario)
    assert inst.podman and inst.container_addr and inst.container_ns.startswith("/proc/")
    rc, d, err = diagnose_container(inst)
    assert d is not None, err
    assert d["target"]["container"] == inst.container_name, d["target"]
    assert d["top_cause"] == sc.cause, err + json.dumps(d["findings"], indent=1)
    if sc.cause == "forwarding-off":
        assert rc == 1
        assert d["findings"][0]["fix"] == ["sysctl -w net.ipv4.ip_forward=1"]
    else:
        assert rc == 0 and d["healthy"], d


def test_port_published_by_podman_is_found_for_watch(podman_instance):
    """The plain `watch --port P` asks Podman when Docker publishes nothing: the container monitor
    (conmon) of the running container says Podman has one, and `podman ps` names it."""
    inst = podman_instance("healthy")
    assert podman_state.monitors_running(), "a running Podman container has a conmon process"
    t = resolve.from_port(podman_lab.PUBLISHED_PORT)
    docker_has_it = docker_state.publisher(podman_lab.PUBLISHED_PORT) is not None    # Docker is asked first
    assert docker_has_it or (t.container, t.container_netns) == (inst.container_name, inst.container_ns), t


def test_lab_up_podman_cli(root, tmp_path):
    """The CLI's --podman: a scenario without a Podman variant is refused before anything is made."""
    p = subprocess.run(CLI + ["lab", "up", "no-listener", "--podman"], capture_output=True, text=True, timeout=60,
                       env=dict(__import__("os").environ, DNATTRACE_RUN_DIR=str(tmp_path)))
    assert p.returncode == 2 and "no --podman variant" in p.stderr, p.stderr
