"""The namespace variant of the lab: client, host and container namespaces wired like a Docker host.

    client ns                 host ns                                     container ns
    {tok}c 198.51.100.2/24 -- {tok}o 198.51.100.1/24
                              {tok}br 172.31.0.1/16 (docker0-like) -- {tok}v ~~ eth0 172.31.0.2/16, :80 server

The host's iptables rules are those Docker 20.10 writes for `docker run -p 8080:80` (copied from
iptables-save on a host where dockerd runs), loaded with the system's iptables-restore (nft backend here).
Every link is created directly inside its namespace, so nothing of an instance lives in the root namespace
except, for conntrack-full, the global nf_conntrack_max (recorded with its old value).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from dnattrace.netns import build as net

CLIENT_ADDR, OUTSIDE_ADDR = "198.51.100.2", "198.51.100.1"
BRIDGE_ADDR, CONTAINER_ADDR, BRIDGE_PREFIX = "172.31.0.1", "172.31.0.2", 16
SUBNET = "172.31.0.0/16"
PUBLISHED_PORT, CONTAINER_PORT, HOST_SERVICE_PORT = 8080, 80, 9090
CONNTRACK_MAX = 256          # global limit while conntrack-full is up: small, but above a quiet host's count


def names(name, token):
    return dict(client_ns=name + "-client", host_ns=name + "-host", container_ns=name + "-ctr",
                outside_if=token + "o", client_if=token + "c", bridge=token + "br", ctr_veth=token + "v")


def docker_rules(bridge, ctr_addr, dnat_to, forward_accept=True, input_drop=False):
    """iptables-restore input laying the host out as Docker 20.10 does for one container with -p 8080:80."""
    accept = ("-A DOCKER -d %s/32 ! -i %s -o %s -p tcp -m tcp --dport %d -j ACCEPT"
              % (ctr_addr, bridge, bridge, CONTAINER_PORT)) if forward_accept else None
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s %s ! -o %s -j MASQUERADE" % (SUBNET, bridge),
        "-A POSTROUTING -s {0}/32 -d {0}/32 -p tcp -m tcp --dport {1} -j MASQUERADE".format(ctr_addr,
                                                                                          CONTAINER_PORT),
        "-A DOCKER -i %s -j RETURN" % bridge,
        "-A DOCKER ! -i %s -p tcp -m tcp --dport %d -j DNAT --to-destination %s:%d"
        % (bridge, PUBLISHED_PORT, dnat_to, CONTAINER_PORT),
        "COMMIT",
        "*filter",
        ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]", ":DOCKER - [0:0]",
        ":DOCKER-ISOLATION-STAGE-1 - [0:0]", ":DOCKER-ISOLATION-STAGE-2 - [0:0]", ":DOCKER-USER - [0:0]",
        "-A INPUT -p tcp -m tcp --dport %d -j DROP" % HOST_SERVICE_PORT if input_drop else None,
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        "-A FORWARD -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % bridge,
        "-A FORWARD -o %s -j DOCKER" % bridge,
        "-A FORWARD -i %s ! -o %s -j ACCEPT" % (bridge, bridge),
        "-A FORWARD -i %s -o %s -j ACCEPT" % (bridge, bridge),
        accept,
        "-A DOCKER-ISOLATION-STAGE-1 -i %s ! -o %s -j DOCKER-ISOLATION-STAGE-2" % (bridge, bridge),
        "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        "-A DOCKER-ISOLATION-STAGE-2 -o %s -j DROP" % bridge,
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        "-A DOCKER-USER -j RETURN",
        "COMMIT",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def base_sysctls(ns, forwarding):
    """New namespaces copy IPv4 settings from the initial one here: set every one that matters."""
    for key, value in (("net.ipv4.ip_forward", int(forwarding)), ("net.ipv4.conf.all.rp_filter", 0),
                       ("net.ipv4.conf.default.rp_filter", 0)):
        net.sysctl_set(key, value, ns)


def start_server(inst, ns, listen, www):
    """Run busybox httpd in `ns` (own session, so it outlives the CLI); record its pid; wait until it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", listen, "-h", www],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    p.returncode = 0          # the lab owns it from now on (down kills it); silence Popen's destructor
    time.sleep(0.01)
    from dnattrace.lab import state
    inst.record("process", pid=p.pid, start=state.process_start(p.pid), netns=ns)
    port = listen.rsplit(":", 1)[-1]
    deadline = time.monotonic() + 15      # a wait until, not a sleep: an emulated kernel (scripts/vm) needs >3 s
    while time.monotonic() < deadline:
        if net.run(["ss", "-Hltn", "sport = :%s" % port], netns=ns, check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise net.NetError("the lab server did not start listening on %s in %s" % (listen, ns))


def make_www(inst):
    www = os.path.join(os.path.dirname(inst.path), inst.name + ".www")
    inst.record("dir", path=www)
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("dnattrace lab %s (%s)\n" % (inst.name, inst.scenario))
    return www


def fill_conntrack(inst, ns):
    """Lower the global nf_conntrack_max (root-only, recorded first) and fill the host ns table with
    ASSURED entries, which early_drop cannot evict, so the next new connection is refused."""
    key = "net.netfilter.nf_conntrack_max"
    inst.record("sysctl", key=key, old=net.sysctl_get(key), netns=None)
    net.sysctl_set(key, CONNTRACK_MAX)
    script = ("for i in $(seq 1 %d); do conntrack -I -p tcp -s 10.255.$((i/250)).$((i%%250+1)) -d 10.254.0.1 "
              "--sport 1000 --dport 2000 --state ESTABLISHED --status ASSURED,SEEN_REPLY -t 3600 "
              "-u ASSURED >/dev/null 2>&1; done; conntrack -C" % (CONNTRACK_MAX + 1))
    count = int(net.run(["sh", "-c", script], netns=ns, timeout=60).stdout.split()[-1])
    if count < CONNTRACK_MAX:
        raise net.NetError("could not fill the conntrack table of %s (%d of %d)" % (ns, count, CONNTRACK_MAX))


def build(inst, sc):
    """Make the namespace topology for scenario `sc`, recording each object in `inst` before making it."""
    n = names(inst.name, inst.token)
    client, host, ctr = n["client_ns"], n["host_ns"], n["container_ns"]
    for ns in (client, host, ctr):
        inst.record("netns", name=ns)
        net.add_netns(ns)
    base_sysctls(host, sc.forwarding)
    base_sysctls(client, False)
    base_sysctls(ctr, False)

    # client <-> host
    net.run(["ip", "link", "add", n["outside_if"], "type", "veth", "peer", "name", n["client_if"],
             "netns", client], netns=host)
    net.run(["ip", "link", "set", n["outside_if"], "up"], netns=host)
    net.run(["ip", "link", "set", n["client_if"], "up"], netns=client)
    net.add_addr(n["outside_if"], OUTSIDE_ADDR + "/24", host)
    net.add_addr(n["client_if"], CLIENT_ADDR + "/24", client)
    net.run(["ip", "route", "add", "default", "via", OUTSIDE_ADDR], netns=client)

    # docker0-like bridge <-> container eth0
    net.run(["ip", "link", "add", n["bridge"], "type", "bridge"], netns=host)
    net.add_addr(n["bridge"], "%s/%d" % (BRIDGE_ADDR, BRIDGE_PREFIX), host)
    net.run(["ip", "link", "set", n["bridge"], "up"], netns=host)
    net.run(["ip", "link", "add", n["ctr_veth"], "type", "veth", "peer", "name", "eth0", "netns", ctr],
            netns=host)
    net.run(["ip", "link", "set", n["ctr_veth"], "master", n["bridge"], "up"], netns=host)
    net.run(["ip", "link", "set", "eth0", "up"], netns=ctr)
    net.add_addr("eth0", "%s/%d" % (CONTAINER_ADDR, BRIDGE_PREFIX), ctr)
    net.run(["ip", "route", "add", "default", "via", BRIDGE_ADDR], netns=ctr)

    net.run(["iptables-restore"], netns=host,
            input=docker_rules(n["bridge"], sc.dnat_target or CONTAINER_ADDR, sc.dnat_target or CONTAINER_ADDR,
                               forward_accept=sc.forward_accept, input_drop=sc.input_drop))

    if sc.rp_filter:
        # A second uplink holds the (more specific) route back to the client: the reply would leave by
        # it, so strict reverse-path filtering on the outside interface refuses the client's packets.
        up2 = inst.token + "u"       # a veth whose peer stays in the host ns (no dummy module here)
        net.run(["ip", "link", "add", up2, "type", "veth", "peer", "name", inst.token + "w"], netns=host)
        for dev in (up2, inst.token + "w"):
            net.run(["ip", "link", "set", dev, "up"], netns=host)
        net.run(["ip", "route", "add", CLIENT_ADDR + "/32", "dev", up2], netns=host)
        net.sysctl_set("net.ipv4.conf.%s.rp_filter" % n["outside_if"], 1, host)
        # The host would not even answer the client's ARP (arp_process checks the reverse path too), so
        # the client knows the host's MAC already, as a client behind a router would: the SYN is sent.
        mac = net.run(["cat", "/sys/class/net/%s/address" % n["outside_if"]], netns=host).stdout.strip()
        net.run(["ip", "neigh", "replace", OUTSIDE_ADDR, "lladdr", mac, "dev", n["client_if"], "nud",
                 "permanent"], netns=client)

    www = make_www(inst)
    if sc.input_drop:
        start_server(inst, host, "%s:%d" % (OUTSIDE_ADDR, HOST_SERVICE_PORT), www)
    elif sc.server:
        start_server(inst, ctr, str(CONTAINER_PORT), www)
    if sc.conntrack_full:
        fill_conntrack(inst, host)
    return n


def describe(name, token, sc):
    """The Instance fields of a namespace-variant instance (everything but the undo log)."""
    n = names(name, token)
    return dict(client_ns=n["client_ns"], host_ns=n["host_ns"], container_ns=n["container_ns"],
                container_name=None, client_addr=CLIENT_ADDR,
                target_addr=OUTSIDE_ADDR, target_port=HOST_SERVICE_PORT if sc.input_drop else PUBLISHED_PORT,
                proto="tcp", container_addr=CONTAINER_ADDR, container_port=CONTAINER_PORT,
                outside_if=n["outside_if"], bridge=n["bridge"])
