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
UDP_PUBLISHED_PORT, UDP_CONTAINER_PORT = 5353, 53
LOCALHOST = "127.0.0.1"
UDP_TIMEOUT = 3600           # host ns only: the stale UDP entry outlives a slow test run
CONNTRACK_MAX = 256          # global limit while conntrack-full is up: small, but above a quiet host's count


SIBLING_ADDR = "172.31.0.3"   # client "sibling": a second container on the bridge
UPLINK2_ADDR, UPLINK2_GW = "203.0.113.1", "203.0.113.254"   # reply_uplink: the second uplink, a gateway nobody has
REPLY_TABLE, REPLY_RULE_PREF = 100, 100
BLACKHOLE_MTU = 1400

# IPv6 (scenarios with family 6 only: the IPv4 scenarios stay single-stack)
CLIENT_ADDR6, OUTSIDE_ADDR6 = "2001:db8:1::2", "2001:db8:1::1"
BRIDGE_ADDR6, CONTAINER_ADDR6 = "2001:db8:2::1", "2001:db8:2::2"
SUBNET6, PREFIX6 = "2001:db8:2::/64", 64
BIG_PATH, BIG_SIZE = "/big", 256 * 1024


def names(name, token):
    return dict(client_ns=name + "-client", host_ns=name + "-host", container_ns=name + "-ctr",
                sibling_ns=name + "-sib", outside_if=token + "o", client_if=token + "c", bridge=token + "br",
                ctr_veth=token + "v", sibling_veth=token + "s", uplink2=token + "u", uplink2_peer=token + "w")


def docker_rules(bridge, ctr_addr, dnat_to, forward_accept=True, input_drop=False, family=4):
    """iptables-restore input laying the host out as Docker 20.10 does for one container with -p 8080:80;
    family 6: the ip6tables-restore input it writes with "ip6tables": true (the same chains, IPv6 addresses)."""
    host_len, loopback, subnet = (32, "127.0.0.0/8", SUBNET) if family == 4 else (128, "::1/128", SUBNET6)
    to = "%s:%d" % (dnat_to, CONTAINER_PORT) if family == 4 else "[%s]:%d" % (dnat_to, CONTAINER_PORT)
    accept = ("-A DOCKER -d %s/%d ! -i %s -o %s -p tcp -m tcp --dport %d -j ACCEPT"
              % (ctr_addr, host_len, bridge, bridge, CONTAINER_PORT)) if forward_accept else None
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d %s -m addrtype --dst-type LOCAL -j DOCKER" % loopback,
        "-A POSTROUTING -s %s ! -o %s -j MASQUERADE" % (subnet, bridge),
        "-A POSTROUTING -s {0}/{2} -d {0}/{2} -p tcp -m tcp --dport {1} -j MASQUERADE".format(ctr_addr,
                                                                                            CONTAINER_PORT, host_len),
        "-A DOCKER -i %s -j RETURN" % bridge,
        "-A DOCKER ! -i %s -p tcp -m tcp --dport %d -j DNAT --to-destination %s"
        % (bridge, PUBLISHED_PORT, to),
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
    _start_service(inst, ns, ["busybox", "httpd", "-f", "-p", listen, "-h", www], "-Hltn",
                   int(listen.rsplit(":", 1)[-1]), "server on " + listen)


def make_www(inst):
    www = os.path.join(os.path.dirname(inst.path), inst.name + ".www")
    inst.record("dir", path=www)
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("dnattrace lab %s (%s)\n" % (inst.name, inst.scenario))
    return www


def fill_conntrack(inst, ns):
    """Lower the global nf_conntrack_max (root-only, recorded first) and fill the host ns table with
    ASSURED entries, which early_drop cannot evict, so the next new connection is refused. Only the
    fill's own entries (mark 1) may hold the places: an entry of the namespace's own traffic (the bridge's
    IGMP report to 224.0.0.22, UNREPLIED) would be evicted by early_drop and let one client connection in
    (seen once, with every lab scenario at once). So the others are deleted after the fill, and a few
    more of its own take their places."""
    key = "net.netfilter.nf_conntrack_max"
    inst.record("sysctl", key=key, old=net.sysctl_get(key), netns=None)
    net.sysctl_set(key, CONNTRACK_MAX)
    insert = ("for i in $(seq 1 %d); do conntrack -I -p tcp -s 10.255.$((i/250)).$((i%%250+1)) -d 10.254.0.1 "
              "--sport %d --dport 2000 --state ESTABLISHED --status ASSURED,SEEN_REPLY -t 3600 -u ASSURED "
              "-m 1 >/dev/null 2>&1; done; conntrack -D -m 0 >/dev/null 2>&1; ")
    script = (insert % (CONNTRACK_MAX + 1, 1000) + insert % (16, 1001) +
              "conntrack -L -m 1 2>/dev/null | wc -l")
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
    attach_container(n, ctr, n["ctr_veth"], CONTAINER_ADDR)

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
        mac = net.link_address(n["outside_if"], host)
        net.run(["ip", "neigh", "replace", OUTSIDE_ADDR, "lladdr", mac, "dev", n["client_if"], "nud",
                 "permanent"], netns=client)

    if sc.family == 6:
        add_ipv6(n, sc)
    apply_knobs(inst, sc, n)
    www = make_www(inst)
    if sc.large_response:
        start_bulk_server(inst, ctr)
    elif sc.proto == "udp":
        start_udp_echo(inst, ctr)
        if sc.udp_stale:
            send_udp_first(n)
        publish_udp(n)
    elif sc.input_drop:
        start_server(inst, host, "%s:%d" % (OUTSIDE_ADDR, HOST_SERVICE_PORT), www)
    elif sc.server:
        start_server(inst, ctr, str(CONTAINER_PORT), www)
    if sc.conntrack_full:
        fill_conntrack(inst, host)
    return n


def add_ipv6(n, sc):
    """The IPv6 half of a dual-stack host: addresses on the outside link and the bridge (nodad: usable at
    once), default routes, IPv6 forwarding as the scenario says, and Docker's ip6tables rules unless the
    port is published on IPv4 only."""
    client, host, ctr = n["client_ns"], n["host_ns"], n["container_ns"]
    for ns, forwarding in ((host, sc.forwarding6), (client, False), (ctr, False)):
        net.sysctl_set("net.ipv6.conf.all.forwarding", int(forwarding), ns)
    for dev, addr, ns in ((n["outside_if"], OUTSIDE_ADDR6, host), (n["client_if"], CLIENT_ADDR6, client),
                          (n["bridge"], BRIDGE_ADDR6, host), ("eth0", CONTAINER_ADDR6, ctr)):
        net.run(["ip", "-6", "addr", "add", "%s/%d" % (addr, PREFIX6), "dev", dev, "nodad"], netns=ns)
    net.run(["ip", "-6", "route", "add", "default", "via", OUTSIDE_ADDR6], netns=client)
    net.run(["ip", "-6", "route", "add", "default", "via", BRIDGE_ADDR6], netns=ctr)
    if sc.publish6:
        net.run(["ip6tables-restore"], netns=host,
                input=docker_rules(n["bridge"], CONTAINER_ADDR6, CONTAINER_ADDR6,
                                   forward_accept=sc.forward_accept6, family=6))
    settle_neighbours(n)


def settle_neighbours(n):
    """One ping along each hop of the journeys (bounded; its result is not the scenario's business).
    Measured here: in the first second after the addresses are added, a neighbour solicitation can go
    unanswered (the container's for its gateway, 1 lab in 4-20: the bridge's MLD snooping has not yet
    seen the solicited-node groups; the host's own drops show br_dev_xmit NO_TX_TARGET), and the SYN-ACK
    then waits a second for ND's retransmission. IPv4's ARP is broadcast and needs none of this."""
    for ns, addr in ((n["client_ns"], OUTSIDE_ADDR6), (n["host_ns"], CONTAINER_ADDR6),
                     (n["container_ns"], BRIDGE_ADDR6), (n["host_ns"], CLIENT_ADDR6)):
        net.run(["busybox", "ping", "-6", "-c", "1", "-W", "3", addr], netns=ns, check=False, timeout=10)


# --- one helper per departure from the healthy layout (everything lives in the lab's namespaces, so
# deleting them removes it; the server processes are recorded) --------------------------------------

def apply_knobs(inst, sc, n):
    host, ctr = n["host_ns"], n["container_ns"]
    if not sc.bridge_up:
        net.run(["ip", "link", "set", n["bridge"], "down"], netns=host)
    if not sc.ctr_default_route:
        net.run(["ip", "route", "del", "default"], netns=ctr)
    if sc.reply_notrack:
        add_reply_notrack(n)
    if sc.foreign_forward_drop:
        add_foreign_forward_drop(host)
    if not sc.output_dnat:
        net.run(["iptables", "-t", "nat", "-D", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype",
                 "--dst-type", "LOCAL", "-j", "DOCKER"], netns=host)
    if sc.client == "localhost":
        localhost_dnat(n, sc.route_localnet)
    if sc.pmtu_blackhole:
        pmtu_blackhole(n)
    if sc.reply_uplink:
        add_reply_uplink(n)
    if not sc.ctr_port_up:
        net.run(["ip", "link", "set", n["ctr_veth"], "down"], netns=host)
    if sc.client == "sibling":
        add_sibling(inst, n)
        if sc.hairpin:
            hairpin_dnat(n)
    if sc.dnat_other_iface:
        dnat_other_iface(n)
    if sc.foreign_forward_new_only:
        add_foreign_forward_new_only(host)
    if sc.prerouting_notrack:
        net.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", str(PUBLISHED_PORT), "-j",
                 "NOTRACK"], netns=host)
    if sc.owner_ruleset:
        OWNER_RULESETS[sc.owner_ruleset](n)
    if sc.tc_ingress_drop:
        tc_ingress_drop(n)


def firewalld_forward(n):
    """The forward part of the table firewalld's nftables backend writes, as its source writes it
    (firewalld/firewalld, src/firewall/core/nftables.py: build_default_rules and build_zone_chain_rules,
    priority offset +10), the outside interface and the bridge in zone public with its default target."""
    zone = ["filter_FWD%s_public_%s" % (d, part) for d in ("I", "O") for part in ("log", "deny", "allow")]
    lines = ["table inet firewalld {"] + [" chain %s {\n }" % c for c in zone]
    for d in ("I", "O"):
        lines.append(" chain filter_FWD%s_public {\n%s }" % (d, "".join(
            "  jump filter_FWD%s_public_%s\n" % (d, part) for part in ("log", "deny", "allow"))))
    lines.append(" chain filter_FORWARD_IN_ZONES {\n  iifname \"%s\" goto filter_FWDI_public\n"
                 "  goto filter_FWDI_public\n }" % n["outside_if"])
    lines.append(" chain filter_FORWARD_OUT_ZONES {\n  oifname \"%s\" goto filter_FWDO_public\n"
                 "  goto filter_FWDO_public\n }" % n["bridge"])
    lines.append(" chain filter_FORWARD {\n  type filter hook forward priority filter + 10; policy accept;\n"
                 "  ct state established,related accept\n  iifname \"lo\" accept\n"
                 "  jump filter_FORWARD_IN_ZONES\n  jump filter_FORWARD_OUT_ZONES\n  ct state invalid drop\n"
                 "  reject with icmpx type admin-prohibited\n }\n}\n")
    net.run(["nft", "-f", "-"], netns=n["host_ns"], input="\n".join(lines))


def legacy_forward_drop(n):
    """A DROP for the client in iptables-legacy's filter FORWARD (the namespace's own legacy tables; its
    deletion takes them along)."""
    net.run(["iptables-legacy", "-I", "FORWARD", "-s", CLIENT_ADDR + "/32", "-p", "tcp", "-j", "DROP"],
            netns=n["host_ns"])


def raw_prerouting_drop(n):
    """A counterless drop of the published port in a raw-priority prerouting chain of its own table."""
    net.run(["nft", "-f", "-"], netns=n["host_ns"], input=(
        "table ip early {\n chain pre {\n  type filter hook prerouting priority raw; policy accept;\n"
        "  tcp dport %d drop\n }\n}\n" % PUBLISHED_PORT))


def netdev_ingress_drop(n):
    """A counting drop of the published port in a netdev ingress chain on the outside link."""
    net.run(["nft", "-f", "-"], netns=n["host_ns"], input=(
        "table netdev edge {\n chain in {\n  type filter hook ingress device %s priority 0; policy accept;\n"
        "  tcp dport %d counter drop\n }\n}\n" % (n["outside_if"], PUBLISHED_PORT)))


OWNER_RULESETS = {"firewalld": firewalld_forward, "legacy": legacy_forward_drop, "raw": raw_prerouting_drop,
                  "ingress": netdev_ingress_drop}


def tc_ingress_drop(n):
    """A tc classifier in direct-action mode on the host's outside link (bpf/lab/tcdrop.bpf.c, shipped
    with the package) that drops TCP to the published port: a below-IP drop, TC_INGRESS."""
    from dnattrace.kernel.objects import OBJECT_DIR
    host = n["host_ns"]
    net.run(["tc", "qdisc", "add", "dev", n["outside_if"], "clsact"], netns=host)
    net.run(["tc", "filter", "add", "dev", n["outside_if"], "ingress", "pref", "7", "bpf", "direct-action", "obj",
             os.path.join(OBJECT_DIR, "tcdrop.bpf.o"), "sec", "tc"], netns=host)


def pmtu_blackhole(n):
    """A path MTU black hole: the host's outside link carries less than the 1500 bytes both ends assume
    (a tunnel, a cloud overlay), and the ICMP "fragmentation needed" the host sends back is filtered, so
    the container never learns to send smaller segments."""
    host = n["host_ns"]
    net.run(["ip", "link", "set", n["outside_if"], "mtu", str(BLACKHOLE_MTU)], netns=host)
    net.run(["iptables", "-I", "OUTPUT", "-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP"],
            netns=host)


def add_reply_uplink(n):
    """A second uplink and a policy rule for traffic coming from the bridge, as VPN / exit-node tools
    install: the containers' replies leave by it (towards a gateway that does not exist here)."""
    host = n["host_ns"]
    net.run(["ip", "link", "add", n["uplink2"], "type", "veth", "peer", "name", n["uplink2_peer"]], netns=host)
    for dev in (n["uplink2"], n["uplink2_peer"]):
        net.run(["ip", "link", "set", dev, "up"], netns=host)
    net.add_addr(n["uplink2"], UPLINK2_ADDR + "/24", host)
    net.run(["ip", "route", "add", "default", "via", UPLINK2_GW, "dev", n["uplink2"], "table", str(REPLY_TABLE)],
            netns=host)
    net.run(["ip", "rule", "add", "iif", n["bridge"], "lookup", str(REPLY_TABLE), "pref", str(REPLY_RULE_PREF)],
            netns=host)


def add_sibling(inst, n):
    """A second container on the bridge (the client of the "sibling" layout)."""
    sib = n["sibling_ns"]
    inst.record("netns", name=sib)
    net.add_netns(sib)
    base_sysctls(sib, False)
    attach_container(n, sib, n["sibling_veth"], SIBLING_ADDR)


def attach_container(n, ns, veth, addr):
    """A veth from the bridge into container namespace `ns` (eth0 there, `addr`, default route via the bridge)."""
    host = n["host_ns"]
    net.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns], netns=host)
    net.run(["ip", "link", "set", veth, "master", n["bridge"], "up"], netns=host)
    net.run(["ip", "link", "set", "eth0", "up"], netns=ns)
    net.add_addr("eth0", "%s/%d" % (addr, BRIDGE_PREFIX), ns)
    net.run(["ip", "route", "add", "default", "via", BRIDGE_ADDR], netns=ns)


def hairpin_dnat(n):
    """Docker's userland-proxy=false layout: the DNAT applies to traffic from the bridge too."""
    host, br = n["host_ns"], n["bridge"]
    net.run(["iptables", "-t", "nat", "-I", "DOCKER", "1", "-i", br, "-p", "tcp", "-m", "tcp", "--dport",
             str(PUBLISHED_PORT), "-j", "DNAT", "--to-destination", "%s:%d" % (CONTAINER_ADDR, CONTAINER_PORT)],
            netns=host)


def dnat_other_iface(n):
    """The DNAT rule restricted to an input interface the clients do not use (a NIC renamed since the
    rule was written, or another uplink): its `! -i BRIDGE` becomes `-i OTHER`."""
    host = n["host_ns"]
    net.run(["iptables", "-t", "nat", "-R", "DOCKER", "2", "-i", n["uplink2"], "-p", "tcp", "-m", "tcp",
             "--dport", str(PUBLISHED_PORT), "-j", "DNAT", "--to-destination",
             "%s:%d" % (CONTAINER_ADDR, CONTAINER_PORT)], netns=host)


def add_foreign_forward_new_only(host):
    """A hand-written nftables.conf forward chain, policy drop, that lets new connections to the container
    in and forgets the replies (no `ct state established,related accept`)."""
    net.run(["nft", "-f", "-"], netns=host,
            input="table inet filter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n"
                  "  ip daddr %s tcp dport %d ct state new counter accept\n }\n}\n" % (CONTAINER_ADDR, CONTAINER_PORT))


_BULK_HTTP = r'''
import socket, sys
body = bytes(range(256)) * (int(sys.argv[2]) // 256)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        req = c.recv(4096)
        big = req.split(b" ")[1:2] == [sys.argv[3].encode()]
        data = body if big else b"dnattrace lab\n"
        # headers and body in one write, as a web server does: the first reply segment is full-sized
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    except OSError:
        pass
    finally:
        c.close()
'''


def start_bulk_server(inst, ns):
    """A web server on the container port whose GET /big answers with a large body in one write."""
    _start_service(inst, ns, [sys.executable, "-c", _BULK_HTTP, str(CONTAINER_PORT), str(BIG_SIZE), BIG_PATH],
                   "-Hltn", CONTAINER_PORT, "bulk HTTP server")


def add_reply_notrack(n):
    """A blanket raw NOTRACK rule (the kind written to spare conntrack) that also catches the container's
    replies: conntrack never sees them, so they are not un-DNATed."""
    net.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-i", n["bridge"], "-p", "tcp", "--sport",
             str(CONTAINER_PORT), "-j", "NOTRACK"], netns=n["host_ns"])


def add_foreign_forward_drop(host):
    """What nftables.service's /etc/nftables.conf (or firewalld) installs beside iptables-nft's tables:
    a second base chain on the forward hook, policy drop."""
    net.run(["nft", "-f", "-"], netns=host,
            input="table inet filter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n"
                  " }\n}\n")


def localhost_dnat(n, route_localnet):
    """The rules CNI portmap / netavark write so 127.0.0.1:PORT reaches the container; they need
    route_localnet on the bridge."""
    host = n["host_ns"]
    net.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-d", LOCALHOST + "/32", "-p", "tcp", "--dport",
             str(PUBLISHED_PORT), "-j", "DNAT", "--to-destination", "%s:%d" % (CONTAINER_ADDR, CONTAINER_PORT)],
            netns=host)
    net.run(["iptables", "-t", "nat", "-I", "POSTROUTING", "-s", "127.0.0.0/8", "-o", n["bridge"], "-j",
             "MASQUERADE"], netns=host)
    net.sysctl_set("net.ipv4.conf.%s.route_localnet" % n["bridge"], int(route_localnet), host)


_UDP_ECHO = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('', %d))\n"
             "while True:\n    d, a = s.recvfrom(2048)\n    s.sendto(d, a)\n" % UDP_CONTAINER_PORT)


def start_udp_echo(inst, ns):
    """A UDP echo server on the container port (own session, recorded like the HTTP server)."""
    _start_service(inst, ns, [sys.executable, "-c", _UDP_ECHO], "-Hlun", UDP_CONTAINER_PORT, "UDP echo server")


def _start_service(inst, ns, argv, ss_flags, port, what):
    """Run argv in `ns` in its own session (so it outlives the CLI), record its pid, wait until it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    p.returncode = 0          # the lab owns it from now on (down kills it); silence Popen's destructor
    time.sleep(0.01)
    from dnattrace.lab import state
    inst.record("process", pid=p.pid, start=state.process_start(p.pid), netns=ns)
    # a wait until, not a sleep: a Python server on an emulated kernel (scripts/vm) under load needs >5 s
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if net.run(["ss", ss_flags, "sport = :%d" % port], netns=ns, check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise net.NetError("the lab %s did not start in %s" % (what, ns))


def send_udp_first(n):
    """The client's flow starts before the port is published: one datagram from the lab's fixed source
    port makes a conntrack entry towards the host itself, kept alive longer than a test run."""
    from dnattrace.lab import traffic
    net.sysctl_set("net.netfilter.nf_conntrack_udp_timeout", UDP_TIMEOUT, n["host_ns"])
    net.run([sys.executable, "-c", traffic.UDP_SEND_ONCE, OUTSIDE_ADDR, str(UDP_PUBLISHED_PORT),
             str(traffic.UDP_SPORT)], netns=n["client_ns"], timeout=10)


def publish_udp(n):
    """Docker's rules for `-p 5353:53/udp`."""
    br, host = n["bridge"], n["host_ns"]
    net.run(["iptables", "-t", "nat", "-A", "DOCKER", "!", "-i", br, "-p", "udp", "--dport",
             str(UDP_PUBLISHED_PORT), "-j", "DNAT", "--to-destination",
             "%s:%d" % (CONTAINER_ADDR, UDP_CONTAINER_PORT)], netns=host)
    net.run(["iptables", "-A", "DOCKER", "-d", CONTAINER_ADDR + "/32", "!", "-i", br, "-o", br, "-p", "udp",
             "--dport", str(UDP_CONTAINER_PORT), "-j", "ACCEPT"], netns=host)


def describe(name, token, sc):
    """The Instance fields of a namespace-variant instance (everything but the undo log)."""
    n = names(name, token)
    on_host = sc.client in ("host", "localhost")
    target_addr = LOCALHOST if sc.client == "localhost" else OUTSIDE_ADDR6 if sc.family == 6 else OUTSIDE_ADDR
    port = HOST_SERVICE_PORT if sc.input_drop else UDP_PUBLISHED_PORT if sc.proto == "udp" else PUBLISHED_PORT
    client_ns = n["host_ns"] if on_host else n["sibling_ns"] if sc.client == "sibling" else n["client_ns"]
    client_addr = target_addr if on_host else SIBLING_ADDR if sc.client == "sibling" else \
        CLIENT_ADDR6 if sc.family == 6 else CLIENT_ADDR
    return dict(client_ns=client_ns, host_ns=n["host_ns"],
                container_ns=n["container_ns"], container_name=None,
                client_addr=client_addr, target_addr=target_addr, target_port=port,
                proto=sc.proto, container_addr=CONTAINER_ADDR6 if sc.family == 6 else CONTAINER_ADDR,
                container_port=UDP_CONTAINER_PORT if sc.proto == "udp" else CONTAINER_PORT,
                outside_if=n["outside_if"], bridge=n["bridge"])
