"""Docker state from the real engine: a container made from a local busybox-static image (no registry),
publishing a port on 127.0.0.1 only; the containers are removed afterwards, even on failure."""
import io
import os
import shutil
import subprocess
import tarfile

import pytest

from conftest import require
from dnattrace.errors import UsageError
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


def test_container_without_ports_and_unknown_container(containers):
    name = containers()
    with pytest.raises(UsageError, match="container %s publishes no port" % name):
        docker_state.container(name).published()
    with pytest.raises(UsageError, match="no container named dnattrace-no-such-container"):
        docker_state.container("dnattrace-no-such-container")
