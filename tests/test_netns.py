"""Namespace names: host, `ip netns` names, unknown inodes; --netns resolution."""
import subprocess
import sys

import pytest

from dnattrace.netns import names as names
from dnattrace.errors import UsageError
from dnattrace.netns import build as net


def test_host_and_ip_netns_names(netns):
    made = netns("n")
    namer = names.Namer(use_docker=False)
    assert namer.name(names.root()[0]) == "host"
    assert namer.name(net.netns_inode(made)) == made
    assert namer.name(12345) == "netns:12345" and namer.name(0) == "?"
    assert names.resolve(made) == (net.netns_inode(made), net.netns_path(made))
    assert names.resolve("host")[0] == names.root()[0]
    assert names.resolve("netns:12345") == (12345, None)


def test_a_namespace_made_later_is_named_on_first_sight(netns):
    namer = names.Namer(use_docker=False)
    made = netns("m")
    assert namer.name(net.netns_inode(made)) == made


def test_unknown_name_is_a_usage_error(root):
    with pytest.raises(UsageError, match="unknown network namespace"):
        names.resolve("no-such-namespace-dt")


def test_docker_is_asked_in_a_child_process():
    """watch and drops name namespaces for their whole life: the Docker SDK's imports (requests,
    urllib3, ...) must stay in the short-lived child that asks the engine, engine or not."""
    code = ("import sys; from dnattrace import forked; from dnattrace.netns import names as netns; forked.stay_light(); netns.docker_netns(); "
            "netns.Namer().refresh(); "
            "print(sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def _docker_engine():
    try:
        import docker
        client = docker.from_env(version="auto", timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@pytest.mark.docker
def test_a_container_is_named_by_its_docker_name(root):
    from conftest import require
    require(_docker_engine(), "a running Docker engine")
    from dnattrace.lab import docker_lab
    docker_lab.ensure_image()
    name = net.unique("dtn")
    try:
        docker_lab.docker("run", "-d", "--name", name, "--network", "none", docker_lab.IMAGE, "sleep", "60")
        pid = int(docker_lab.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)
        inode, path = names.resolve(name)
        assert path == "/proc/%d/ns/net" % pid
        import os
        assert inode == os.stat(path).st_ino != names.root()[0]
        assert names.Namer().name(inode) == name
    finally:
        docker_lab.docker("rm", "-f", name, check=False)


def test_docker_is_asked_less_often_while_it_cannot_name_a_namespace(monkeypatch):
    """An unnamed namespace on every event for ten minutes: each Docker question is a look-up child that
    imports the SDK, so they back off (5, 10, 20 ... 120 s) instead of one every 5 s; a container that
    appears later is still named within the longest interval."""
    clock = [1000.0]
    asked = []
    known = {}

    def fake_docker():
        asked.append(clock[0])
        return dict(known)

    monkeypatch.setattr(names.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(names, "docker_netns", fake_docker)
    monkeypatch.setattr(names, "ip_netns", lambda: {})
    monkeypatch.setattr(names, "root", lambda: (1, "/proc/1/ns/net"))
    namer = names.Namer()
    while clock[0] < 1600:
        assert namer.name(4242) == "netns:4242"
        clock[0] += 0.1
    assert 6 <= len(asked) <= 12, asked            # 120 questions without the back-off
    assert max(b - a for a, b in zip(asked, asked[1:])) <= names._DOCKER_RETRY_MAX_S + 3
    known["late-container"] = (4242, "/proc/4242/ns/net")
    end = clock[0] + names._DOCKER_RETRY_MAX_S + 3
    while clock[0] < end and namer.name(4242) != "late-container":
        clock[0] += 0.1
    assert namer.name(4242) == "late-container"


def test_owner_netns_survives_a_namespace_that_vanishes_meanwhile(monkeypatch):
    """Two namespaces hold the address; one is removed between the listing and the nsid question (a
    container stopping, another lab torn down): the look-up answers with the other, no traceback."""
    from dnattrace.netns import names as nsnames, rtnl
    from dnattrace.watch import resolve
    monkeypatch.setattr(nsnames, "ip_netns", lambda: {"a": (1, "/proc/self/ns/net"), "b": (2, "/gone/ns")})
    monkeypatch.setattr(nsnames, "docker_netns", lambda: {})
    monkeypatch.setattr(rtnl, "addresses", lambda path=None: ["172.31.0.2"])
    monkeypatch.setattr(rtnl, "veth_peer_nsids", lambda host: {7})

    def nsid_of(path, host):
        if path == "/gone/ns":
            raise FileNotFoundError(2, "No such file or directory", path)
        return 7
    monkeypatch.setattr(rtnl, "nsid_of", nsid_of)
    assert resolve.owner_netns("172.31.0.2", "/proc/1/ns/net") == "/proc/self/ns/net"
