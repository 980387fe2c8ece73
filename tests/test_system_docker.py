"""Docker state from the real engine: a container made from a local busybox-static image (no registry),
publishing a port on 127.0.0.1 only; the containers are removed afterwards, even on failure."""
import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import require
from dnattrace.errors import DnattraceError, UsageError
from dnattrace.netns import build as net
from dnattrace.evidence import docker_state, sockets

IMAGE = "dnattrace-test:busybox"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _docker_ok():
    return shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture
def image(root):
    require(_docker_ok(), "a running Docker engine")
    require(os.path.exists(BUSYBOX), "busybox-static (/bin/busybox)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
            for d in ("tmp", "www"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        subprocess.run(["docker", "import", "-", IMAGE], input=buf.getvalue(), capture_output=True, check=True)
    return IMAGE


@pytest.fixture
def containers(image):
    made = []

    def run(*args, name=None):
        name = name or net.unique("dtt-web")
        subprocess.run(["docker", "run", "-d", "--name", name] + list(args) +
                       [image, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
                       capture_output=True, text=True, check=True)
        made.append(name)
        return name

    yield run
    for name in made:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_container_state_ports_and_namespace(containers):
    name = containers("-p", "127.0.0.1:18931:80")
    c = docker_state.container(name)
    assert c.running and c.pid > 0 and c.name == name
    assert c.netns == "/proc/%d/ns/net" % c.pid and os.path.exists(c.netns)
    assert c.address and c.address.count(".") == 3
    assert [(p.host_port, p.container_port, p.proto, p.host_ip) for p in c.published()] == \
        [(18931, 80, "tcp", "127.0.0.1")]
    assert docker_state.container(c.id[:12]).name == name
    found = docker_state.publisher(18931)
    assert found is not None and found[0].name == name and found[1].container_port == 80
    assert docker_state.publisher(18931, "udp") is None
    # the server listens inside the container's namespace, not in ours
    assert [l.port for l in sockets.listeners(80, netns=c.netns)] == [80]


def test_publisher_over_the_socket_is_the_sdks_answer(containers, monkeypatch):
    """watch's start-up asks the engine's socket (docker_engine), not the SDK: the same container and
    binding, for each protocol, a port nobody publishes, and an engine that is not there."""
    name = containers("-p", "127.0.0.1:18932:80", "-p", "18933:81/udp")
    dc = docker_state.client()
    for port, proto in ((18932, "tcp"), (18933, "udp"), (18933, "tcp"), (18934, "tcp")):
        assert docker_state.publisher(port, proto) == docker_state.publisher(port, proto, dc=dc), (port, proto)
    assert docker_state.publisher(18933, "udp")[0].name == name
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DnattraceError, match="cannot reach the Docker engine"):
        docker_state.publisher(18932)


def test_watch_resolves_a_published_port_without_the_sdk(containers):
    """The plain `watch --port P` looks its target up in the watch process: no Docker SDK imported."""
    name = containers("-p", "127.0.0.1:18935:80")
    code = ("import sys; from dnattrace.watch.resolve import resolve; t = resolve(port=18935); "
            "print(t.container, t.container_netns, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('docker', 'requests', 'urllib3', 'pyroute2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    c = docker_state.container(name)
    assert out == [name, c.netns, "[]"]


def test_container_without_ports_and_unknown_container(containers):
    name = containers()
    with pytest.raises(UsageError, match="container %s publishes no port" % name):
        docker_state.container(name).published()
    with pytest.raises(UsageError, match="no container named dnattrace-no-such-container"):
        docker_state.container("dnattrace-no-such-container")
