"""The --docker variant of the lab: the real Docker engine publishes the port, the client namespace is
attached to the root namespace by a veth.

    client ns {tok}c 198.51.100.2/24 --- {tok}o 198.51.100.1/24 (root ns) -- docker0 -- container (docker run -p 8080:80)

Uses the docker CLI (no SDK version negotiation to get wrong, and the same commands a user would type).
The image is built locally (no registry is reachable): `docker import` of a busybox-static root filesystem,
tagged dnattrace-lab:busybox; it is kept between runs as a cache. forwarding-off switches
net.ipv4.ip_forward off in the ROOT namespace: its old value is recorded before anything else, so `down`
(and `down --all` after a crash) restores it.

IPv6 scenarios (family 6) put the container on a user-defined network with IPv6
(`docker network create --ipv6 --subnet 2001:db8:d0c::/64`): with "ip6tables": true in daemon.json the
engine publishes the port in ip6tables too, DNAT to the container's IPv6 address. The client's veth gets
IPv6 addresses beside the IPv4 ones, and the root namespace's net.ipv6.conf.all.forwarding is set as the
scenario says (1 for healthy, 0 for forwarding-off), its old value recorded first as for IPv4.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time

from dnattrace.netns import build as net

IMAGE = "dnattrace-lab:busybox"
CLIENT_ADDR, OUTSIDE_ADDR = "198.51.100.2", "198.51.100.1"
CLIENT_ADDR6, OUTSIDE_ADDR6, SUBNET6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:d0c::/64"
PUBLISHED_PORT, CONTAINER_PORT = 8080, 80


def engine(tool, *args, check=True, timeout=120, input=None):
    """`tool args...` (docker or podman); a NetError with its stderr when it fails and check is set."""
    p = subprocess.run([tool] + list(args), capture_output=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise net.NetError("%s %s failed: %s" % (tool, " ".join(args[:2]), p.stderr.decode(errors="replace").strip()))
    return p


def docker(*args, **kw):
    return engine("docker", *args, **kw)


def _rootfs_tar():
    """A tar of /bin/busybox, its applet symlinks and /www/index.html, built in memory."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "www", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(os.path.realpath(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo("bin/" + applet)
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        page = b"dnattrace lab (docker)\n"
        info = tarfile.TarInfo("www/index.html")
        info.size, info.mode = len(page), 0o644
        tar.addfile(info, io.BytesIO(page))
    return buf.getvalue()


def ensure_image():
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        docker("import", "-", IMAGE, input=_rootfs_tar())


def describe(name, token, sc):
    six = sc.family == 6
    return dict(client_ns=name + "-client", host_ns=None, container_ns=None, container_name=name + "-web",
                client_addr=CLIENT_ADDR6 if six else CLIENT_ADDR, target_addr=OUTSIDE_ADDR6 if six else OUTSIDE_ADDR,
                target_port=PUBLISHED_PORT, proto="tcp",
                container_addr="", container_port=CONTAINER_PORT, outside_if=token + "o", bridge="docker0")


def _address_taken(addr):
    out = net.run(["ip", "-j", "-4", "addr", "show"]).stdout
    return any(a.get("local") == addr for link in json.loads(out) for a in link.get("addr_info", []))


def build_client(inst, family=4):
    """The client namespace and its veth to the root namespace (198.51.100.2 -> 198.51.100.1, and with
    family 6 2001:db8:1::2 -> 2001:db8:1::1 too), recorded."""
    client = inst.client_ns
    inst.record("netns", name=client)
    net.add_netns(client)
    for k, v in (("net.ipv4.ip_forward", 0), ("net.ipv4.conf.all.rp_filter", 0),
                 ("net.ipv4.conf.default.rp_filter", 0)):
        net.sysctl_set(k, v, client)
    inst.record("link", name=inst.outside_if, netns=None)
    net.run(["ip", "link", "add", inst.outside_if, "type", "veth", "peer", "name", inst.token + "c",
             "netns", client])
    net.add_addr(inst.outside_if, OUTSIDE_ADDR + "/24")
    net.run(["ip", "link", "set", inst.outside_if, "up"])
    net.add_addr(inst.token + "c", CLIENT_ADDR + "/24", client)
    net.run(["ip", "link", "set", inst.token + "c", "up"], netns=client)
    net.run(["ip", "route", "add", "default", "via", OUTSIDE_ADDR], netns=client)
    if family == 6:
        net.sysctl_set("net.ipv6.conf.all.forwarding", 0, client)
        net.run(["ip", "-6", "addr", "add", OUTSIDE_ADDR6 + "/64", "dev", inst.outside_if, "nodad"])
        net.run(["ip", "-6", "addr", "add", CLIENT_ADDR6 + "/64", "dev", inst.token + "c", "nodad"], netns=client)
        net.run(["ip", "-6", "route", "add", "default", "via", OUTSIDE_ADDR6], netns=client)


def ipv6_network(inst, sc):
    """A user-defined network with IPv6 for the container (recorded), and root IPv6 forwarding as the
    scenario says (its old value recorded before the network exists: the engine may change it)."""
    key = "net.ipv6.conf.all.forwarding"
    inst.record("sysctl", key=key, old=net.sysctl_get(key), netns=None)
    netname = inst.name + "-net6"
    inst.record("docker-network", name=netname)
    docker("network", "create", "--ipv6", "--subnet", SUBNET6, netname)
    net.sysctl_set(key, int(sc.forwarding6))
    return netname


def wait_listening(inst):
    deadline = time.monotonic() + 5
    while not net.run(["nsenter", "--net=" + inst.container_ns, "ss", "-Hltn", "sport = :%d" % CONTAINER_PORT],
                      check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise net.NetError("the container %s does not listen on :%d" % (inst.container_name, CONTAINER_PORT))
        time.sleep(0.05)


def wait_ipv6_ready(inst, netname):
    """The engine's IPv6 addresses go through duplicate address detection (about a second, during which a
    packet to them is dropped): wait until neither the container's nor the bridge's is tentative."""
    bridge = "br-" + docker("network", "inspect", "-f", "{{.Id}}", netname).stdout.decode().strip()[:12]
    deadline = time.monotonic() + 10
    while (net.run(["nsenter", "--net=" + inst.container_ns, "ip", "-6", "addr", "show", "tentative"],
                   check=False).stdout.strip()
           or net.run(["ip", "-6", "addr", "show", "dev", bridge, "tentative"], check=False).stdout.strip()):
        if time.monotonic() > deadline:
            raise net.NetError("the IPv6 addresses of %s are still tentative" % inst.container_name)
        time.sleep(0.05)
    # then one ping along each hop, as topology.settle_neighbours does for the namespace lab (why: there)
    gateway = json.loads(docker("network", "inspect", netname).stdout)[0]["IPAM"]["Config"]
    gateway = next((c.get("Gateway") for c in gateway if ":" in (c.get("Gateway") or "")), "")
    for prefix, addr in (([], inst.container_addr), (["nsenter", "--net=" + inst.container_ns], gateway),
                         (["ip", "netns", "exec", inst.client_ns], OUTSIDE_ADDR6)):
        if addr:
            net.run(prefix + ["busybox", "ping", "-6", "-c", "1", "-W", "3", addr], check=False, timeout=10)


def build(inst, sc):
    """Make the Docker variant of `sc`, recording each object in `inst` before making it."""
    key = "net.ipv4.ip_forward"
    if _address_taken(OUTSIDE_ADDR):
        raise net.NetError("%s is already on an interface of the root namespace (another --docker lab "
                           "instance?)" % OUTSIDE_ADDR)
    if docker("container", "inspect", inst.container_name, check=False).returncode == 0:
        raise net.NetError("a container named %s exists already (not made by this instance)" % inst.container_name)
    if not sc.forwarding:  # recorded before it is changed: whatever happens next, down puts it back
        inst.record("sysctl", key=key, old=net.sysctl_get(key), netns=None)
        net.sysctl_set(key, 0)
    ensure_image()
    build_client(inst, sc.family)
    network = ["--network", ipv6_network(inst, sc)] if sc.family == 6 else []

    inst.record("container", name=inst.container_name)
    docker("run", "-d", "--name", inst.container_name, "-p", "%d:%d" % (PUBLISHED_PORT, CONTAINER_PORT),
           *network, IMAGE, "busybox", "httpd", "-f", "-p", str(CONTAINER_PORT), "-h", "/www")
    info = json.loads(docker("inspect", inst.container_name).stdout)[0]
    inst.container_ns = "/proc/%d/ns/net" % info["State"]["Pid"]
    nets = info["NetworkSettings"]["Networks"]
    inst.container_addr = (next(iter(nets.values()))["GlobalIPv6Address"] if sc.family == 6
                           else info["NetworkSettings"]["IPAddress"])
    inst.save()
    if not sc.forward_accept:
        # what users do to Docker: a DOCKER-USER rule (evaluated before Docker's own ACCEPT) that drops
        # the traffic to the container
        rule = ["DOCKER-USER", "-d", inst.container_addr + "/32", "-p", "tcp", "-m", "tcp",
                "--dport", str(CONTAINER_PORT), "-j", "DROP"]
        inst.record("rule", table="filter", rule=rule, netns=None)
        net.run(["iptables", "-t", "filter", "-I"] + rule)
    wait_listening(inst)
    if network:
        wait_ipv6_ready(inst, network[1])
