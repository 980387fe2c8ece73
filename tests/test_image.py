"""The container image under the real engine (README, Container image): `scripts/image` builds `dnattrace`
(or finds it up to date), a real container publishes a port on a user-defined network, root IPv4
forwarding is switched off, and diagnose --container NAME --probe, watch --container NAME and drops run
through the image. The test's container and network are removed and ip_forward restored even when it
fails; the image `dnattrace` stays (the documented cache, rebuilt when its inputs change)."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import require
from dnattrace.lab import docker_lab
from dnattrace.netns import build as net
from hostcheck import ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.docker, pytest.mark.slow]

IMAGE = "dnattrace"
PORT = 18943
# the README's run line; --privileged asks the runtime for every capability, which an engine whose own
# bounding set lacks one (this VM has no CAP_SYS_RESOURCE) refuses: then the same without that one
PRIVILEGED = ["--privileged"]
ALL_BUT_SYS_RESOURCE = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                        "--security-opt", "apparmor=unconfined"]
MOUNTS = ["--pid=host", "--network=host", "-v", "/sys/kernel:/sys/kernel", "-v", "/run/docker.sock:/run/docker.sock",
          "-v", "/run/netns:/run/netns"]


def _docker_ok():
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (debootstrap, chroot, docker)")
    require(_docker_ok(), "a running Docker engine (docker info)")
    t = time.monotonic()
    p = subprocess.run([os.path.join(ROOT, "scripts", "image")], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print("scripts/image: %.0f s: %s" % (time.monotonic() - t, p.stdout.strip().splitlines()[-1]))
    return IMAGE


@pytest.fixture(scope="module")
def run_flags(image):
    for flags in (PRIVILEGED, ALL_BUT_SYS_RESOURCE):
        p = subprocess.run(["docker", "run", "--rm"] + flags + MOUNTS + [image, "--help"], capture_output=True,
                           text=True, timeout=120)
        if p.returncode == 0:
            return flags
        assert "unable to apply caps" in p.stderr, p.stderr
    pytest.fail("the image does not start with --privileged nor with every capability but CAP_SYS_RESOURCE")


@pytest.fixture(scope="module")
def forwarding_off(image):
    """A busybox httpd publishing PORT on a user-defined network; root ip_forward 0 while it runs."""
    docker_lab.ensure_image()
    name, netname = net.unique("dti-web"), net.unique("dti-net")
    forward = net.sysctl_get("net.ipv4.ip_forward")
    try:
        subprocess.run(["docker", "network", "create", netname], capture_output=True, check=True, timeout=60)
        subprocess.run(["docker", "run", "-d", "--name", name, "--network", netname, "-p", "%d:80" % PORT,
                        docker_lab.IMAGE, "busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
                       capture_output=True, check=True, timeout=120)
        net.sysctl_set("net.ipv4.ip_forward", 0)
        yield name
    finally:
        net.sysctl_set("net.ipv4.ip_forward", forward)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "network", "rm", netname], capture_output=True, timeout=60)


def through_image(flags, *args, timeout=90):
    return subprocess.run(["docker", "run", "--rm"] + flags + MOUNTS + [IMAGE] + list(args), capture_output=True,
                          text=True, timeout=timeout)


def test_diagnose_probe_names_forwarding_off(run_flags, forwarding_off):
    p = through_image(run_flags, "diagnose", "--container", forwarding_off, "--probe", "--timeout", "5")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Cause: IPv4 forwarding is off" in p.stdout and "(forwarding-off" in p.stdout, p.stdout + p.stderr
    assert "ip_error+" in p.stdout and "sysctl -w net.ipv4.ip_forward=1" in p.stdout, p.stdout


def _host_address():
    out = json.loads(net.run(["ip", "-j", "-4", "route", "get", "192.0.2.1"]).stdout or "[]")
    return out[0].get("prefsrc") if out else None


def test_watch_follows_the_container(run_flags, forwarding_off):
    addr = _host_address()
    require(addr, "an IPv4 address on a non-loopback interface of this host")
    p = subprocess.Popen(["docker", "run", "--rm", "--name", forwarding_off + "-watch"] + run_flags + MOUNTS
                         + [IMAGE, "watch", "--container", forwarding_off, "--duration", "6", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()        # the start record: the probes are attached
        assert first and json.loads(first)["type"] == "start", first + p.stderr.read()
        for _ in range(2):                 # made on this host: OUTPUT's DNAT, delivered (no forwarding)
            with socket.create_connection((addr, PORT), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                s.recv(100)
        out, err = p.communicate(timeout=60)
    finally:
        subprocess.run(["docker", "rm", "-f", forwarding_off + "-watch"], capture_output=True, timeout=60)
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    journeys = [r for r in records if r["type"] == "journey"]
    assert journeys, out[-2000:] + err
    assert any(s.get("netns_name") == forwarding_off for j in journeys for s in j["steps"]), journeys[0]
    assert records[-1]["type"] == "summary" and records[-1]["connections"], records[-1]


def test_drops_json(run_flags):
    p = through_image(run_flags, "drops", "--duration", "1", "--json")
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert records[0]["type"] == "start" and records[-1]["type"] == "summary" and records[0]["schema"] == 1
