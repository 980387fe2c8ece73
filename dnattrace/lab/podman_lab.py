"""The --podman variant of the lab: rootful Podman (netavark, its own iptables chains) publishes the port
on a network of its own; the client namespace is attached to the root namespace as in --docker.

    client ns {tok}c 198.51.100.2/24 --- {tok}o 198.51.100.1/24 (root ns) -- podmanN -- container (-p 8080:80)

The image is docker_lab's busybox-static root filesystem, `podman import`ed as
localhost/dnattrace-lab:busybox and kept between runs as a cache. Netavark switches net.ipv4.ip_forward
on whenever it sets up a network, so forwarding-off records the old value first and switches it off
after the container runs; `down` puts it back. Explicit --ulimit values: Podman raises RLIMIT_NOFILE and
RLIMIT_NPROC in the container by default, which needs CAP_SYS_RESOURCE (a sandbox may not grant it).

Netavark (1.4, Debian 12) accepts in FORWARD only its containers' own traffic and the replies to it; a new
connection from outside to a published port relies on the FORWARD policy, which Docker on the same host
sets to DROP (dnattrace diagnoses exactly that: filter-forward-drop, policy DROP). The lab's host is meant
to work, so it inserts the ACCEPT such a host needs (recorded, removed by `down`).
"""
from __future__ import annotations

import json

from dnattrace.netns import build as net
from dnattrace.lab import docker_lab

IMAGE = "localhost/dnattrace-lab:busybox"
PUBLISHED_PORT, CONTAINER_PORT = docker_lab.PUBLISHED_PORT, docker_lab.CONTAINER_PORT


def podman(*args, **kw):
    return docker_lab.engine("podman", *args, **kw)


def ensure_image():
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        podman("import", "-", IMAGE, input=docker_lab._rootfs_tar())


def describe(name, token, sc):
    d = docker_lab.describe(name, token, sc)
    d.update(bridge="")
    return d


def network_name(inst):
    return inst.name + "-net"


def build(inst, sc):
    """Make the Podman variant of `sc`, recording each object in `inst` before making it."""
    key = "net.ipv4.ip_forward"
    if docker_lab._address_taken(docker_lab.OUTSIDE_ADDR):
        raise net.NetError("%s is already on an interface of the root namespace (another --docker or "
                           "--podman lab instance?)" % docker_lab.OUTSIDE_ADDR)
    if podman("container", "exists", inst.container_name, check=False).returncode == 0:
        raise net.NetError("a container named %s exists already (not made by this instance)" % inst.container_name)
    if not sc.forwarding:  # recorded before anything: whatever happens next, down puts it back
        inst.record("sysctl", key=key, old=net.sysctl_get(key), netns=None)
    ensure_image()
    docker_lab.build_client(inst)
    netname = network_name(inst)
    inst.record("podman-network", name=netname)
    podman("network", "create", netname)
    inst.record("podman-container", name=inst.container_name)
    podman("run", "-d", "--name", inst.container_name, "--network", netname,
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
           "-p", "%d:%d" % (PUBLISHED_PORT, CONTAINER_PORT),
           IMAGE, "busybox", "httpd", "-f", "-p", str(CONTAINER_PORT), "-h", "/www", timeout=180)
    info = json.loads(podman("container", "inspect", "--format", "json", inst.container_name).stdout)[0]
    inst.container_ns = "/proc/%d/ns/net" % info["State"]["Pid"]
    inst.container_addr = info["NetworkSettings"]["Networks"][netname]["IPAddress"]
    nets = json.loads(podman("network", "inspect", netname).stdout)
    inst.bridge = (nets[0].get("network_interface") if nets else "") or ""
    inst.save()
    rule = ["FORWARD", "-d", inst.container_addr + "/32", "-p", "tcp", "-m", "tcp", "--dport", str(CONTAINER_PORT),
            "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]
    inst.record("rule", table="filter", rule=rule, netns=None)
    net.run(["iptables", "-t", "filter", "-I"] + rule)
    if not sc.forwarding:     # after netavark switched it on
        net.sysctl_set(key, 0)
    docker_lab.wait_listening(inst)
