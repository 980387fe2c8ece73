"""Turn what the user named (--port, --container, --netns) into what to follow: the published endpoint,
where DNAT sends it, and the namespaces whose netfilter hooks must be watched.

Sources, in order: the Docker engine (a container's published ports, address and namespace), then the
host's own DNAT rules for the port (any NAT layout, Docker or not), else a local service on the port.
"""
from __future__ import annotations

import os
from typing import Optional

from dnattrace.errors import DnattraceError, UsageError
from dnattrace.netns import rtnl
from dnattrace.target import Endpoint, Target


def check_port(port: int) -> int:
    if not 1 <= int(port) <= 65535:
        raise UsageError("port %s is out of range (1-65535)" % port)
    return int(port)


def check_address(addr: str, option: str) -> str:
    """An address given on the command line (--dst), IPv4 or IPv6, normalised: one line naming the option
    when it is not an address."""
    import ipaddress
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        raise UsageError("%s %s is not an IP address" % (option, addr)) from None


def is_netns(path: str) -> bool:
    """Whether path is a network namespace (an nsfs file: /run/netns/NAME, /proc/PID/ns/net)."""
    import fcntl
    NS_GET_NSTYPE, CLONE_NEWNET = 0xB703, 0x40000000
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def netns_path_of(name: Optional[str]) -> Optional[str]:
    """--netns NAME -> a path to enter; None for the current namespace."""
    if not name or name in ("host", "root"):
        return None
    if os.path.exists(name):
        if not is_netns(name):
            raise UsageError("--netns %s is not a network namespace" % name)
        return name
    from dnattrace.netns import names as netns
    _inode, path = netns.resolve(name)
    if path is None:
        raise UsageError("network namespace %s has no path to enter" % name)
    return path


def find_container(name: str):
    """The container `name` from Docker, else from Podman (asked only when Docker has no such name or
    no engine answers); UsageError (or Docker's error) when neither knows it."""
    from dnattrace.evidence import docker_state, podman_state
    try:
        return docker_state.container(name)
    except DnattraceError as docker_said:     # UsageError (no such name) or no engine
        try:
            return podman_state.container(name)
        except UsageError:
            raise docker_said from None


def from_container(name: str, proto: str = "tcp", port: Optional[int] = None) -> Target:
    return _from_info(find_container(name), proto, port)


def _from_info(c, proto: str, port: Optional[int]) -> Target:
    if not c.running:
        raise UsageError("container %s is not running" % c.name)
    bindings = c.published(proto)
    if port is not None:
        bindings = [b for b in bindings if b.host_port == port] or bindings
    b = bindings[0]
    if not os.path.exists(c.netns or ""):
        raise UsageError("the network namespace of container %s is gone" % c.name)
    backends = [Endpoint(c.address or None, b.container_port)]
    if getattr(c, "address6", ""):     # an IPv6-enabled network: ip6tables DNAT sends IPv6 clients here
        backends.append(Endpoint(c.address6, b.container_port))
    return Target(proto=proto, port=b.host_port, backends=backends, container=c.name, container_netns=c.netns)


def from_port(port: int, proto: str = "tcp", host_netns: Optional[str] = None) -> Target:
    """A port: the Docker container publishing it, else the DNAT rules for it, else a local service."""
    port = check_port(port)
    if host_netns is None:
        found = _publisher(port, proto)
        if found:
            return _from_info(found[0], proto, port)
    from dnattrace.evidence import firewall
    targets = []
    for read in (firewall.read_iptables, firewall.read_ip6tables):   # IPv6 has its own DNAT rules
        try:
            targets += firewall.dnat_targets(read(host_netns), port, proto)
        except Exception:   # no iptables (or ip6tables) on this host: follow the port alone
            continue
    backends = []
    for t in targets:
        if t.addr and all((b.addr, b.port) != (t.addr, t.target_port) for b in backends):
            backends.append(Endpoint(t.addr, t.target_port))
    return Target(proto=proto, port=port, backends=backends, host_netns=host_netns,
                  dnat_rule=targets[0].rule if targets else "")


def _publisher(port: int, proto: str):
    """The Docker container publishing the port, else the Podman one, else None. Podman's CLI (~50 ms
    of a Go start-up) is asked on a thread while Docker's socket is, so the two cost the longer one."""
    import threading
    from dnattrace.evidence import docker_state, podman_state
    podman: list = [None]

    def ask_podman():
        try:
            podman[0] = podman_state.publisher(port, proto)
        except DnattraceError:
            pass
    asking = threading.Thread(target=ask_podman, name="podman-publisher", daemon=True)
    asking.start()
    try:
        found = docker_state.publisher(port, proto)
    except DnattraceError:
        found = None    # no Docker engine: Podman's, else the rules
    if found:
        return found    # Podman's answer is not needed: its thread ends on its own
    asking.join()
    return podman[0]


def owner_netns(addr: str, host_netns: Optional[str] = None) -> Optional[str]:
    """Path of the namespace (an `ip netns` one or a Docker container's) that holds `addr` and is
    linked to the host's namespace by a veth, or None.

    The container side of a DNAT is where a SYN is finally delivered or refused, so its netfilter
    hooks are watched too. Several namespaces may hold the same private address (one per lab or per
    compose project): the one whose veth peer sits in the host's namespace is the one the host reaches.
    Docker is asked only when no `ip netns` namespace linked to the host holds it (its SDK costs
    ~0.2 s of start-up). The netlink questions go over a plain socket (netns/rtnl.py), not pyroute2: this
    runs in the watch process itself when --netns says where the host is.
    """
    from dnattrace.netns import names as nsnames
    peers = None
    unlinked: list[str] = []        # holders no veth of the host reaches: the answer if nothing better
    for source in (nsnames.ip_netns, nsnames.docker_netns):
        holders = _holders(addr, [path for _name, (_ino, path) in source().items()], host_netns)
        if holders:
            peers = rtnl.veth_peer_nsids(host_netns) if peers is None else peers
            linked = [p for p in holders if _nsid_or_none(p, host_netns) in peers]
            if linked:
                return linked[0]
            unlinked += holders
    return unlinked[0] if unlinked else None


def _holders(addr, candidates, host_netns) -> list[str]:
    out = []
    for path in candidates:
        if not path or path == host_netns:
            continue
        try:
            if addr in rtnl.addresses(path):
                out.append(path)
        except Exception:   # a namespace that vanished meanwhile
            continue
    return [p for p in out if os.path.exists(p)]


def _nsid_or_none(path, host_netns):
    """The namespace's id as the host sees it; None when it vanished meanwhile (a container stopped, a
    lab torn down between the listing and this question)."""
    try:
        return rtnl.nsid_of(path, host_netns)
    except OSError:
        return None


def resolve(port: Optional[int] = None, container: Optional[str] = None, proto: str = "tcp",
            netns: Optional[str] = None, dst: Optional[str] = None) -> Target:
    """The Target for the command-line options (--port / --container / --netns / --dst)."""
    if not port and not container:
        raise UsageError("say what to watch: --port PORT or --container NAME")
    host = netns_path_of(netns)
    t = from_container(container, proto, port) if container else from_port(port, proto, host)
    t.host_netns = host
    t.addr = dst
    if t.backends and not t.container_netns and t.backends[0].addr:
        t.container_netns = owner_netns(t.backends[0].addr, host)
    return t


def resolve_with_addresses(**options):
    """(resolve(**options), the addresses of the namespaces it names): watch asks both in one
    look-up child, so pyroute2 is imported once at start, not once for each."""
    t = resolve(**options)
    return t, _local_addresses(t.netns_paths())


def local_addresses(paths) -> dict[int, set[str]]:
    """The IPv4 addresses of each namespace (by inode), read once when the watch starts: in one look-up
    (a child process when watch stays light: one pyroute2 import for all the namespaces, not one each)."""
    from dnattrace import forked
    return forked.lookup(_local_addresses, list(paths))


def _local_addresses(paths) -> dict[int, set[str]]:
    from dnattrace.netns import enter as ns
    out = {}
    for path in paths:
        try:
            out[ns.inode(path)] = set(rtnl.addresses(path))
        except Exception:     # evidence, not a precondition: the journey just says less
            continue
    return out
