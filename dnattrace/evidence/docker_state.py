"""What the Docker engine knows about a container: addresses per network, published ports, the network
namespace (/proc/<State.Pid>/ns/net) and whether it runs; and which container publishes a host port.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dnattrace.errors import DnattraceError, UsageError
from dnattrace.evidence import docker_engine


@dataclass
class PortBinding:
    host_port: int
    container_port: int
    proto: str              # tcp | udp
    host_ip: str = ""       # "" or 0.0.0.0 = every address


@dataclass
class ContainerInfo:
    name: str
    id: str
    running: bool
    pid: int
    addresses: dict[str, str] = field(default_factory=dict)    # network name -> IPv4 address
    gateways: dict[str, str] = field(default_factory=dict)     # network name -> gateway
    ports: list[PortBinding] = field(default_factory=list)
    addresses6: dict[str, str] = field(default_factory=dict)   # network name -> IPv6 address (IPv6-enabled networks)

    @property
    def netns(self) -> Optional[str]:
        return "/proc/%d/ns/net" % self.pid if self.running and self.pid else None

    @property
    def address(self) -> str:
        """The first address (the one a single-network container is reached at)."""
        return next(iter(self.addresses.values()), "")

    @property
    def address6(self) -> str:
        """The first IPv6 address: where ip6tables DNAT sends the port when the network has IPv6."""
        return next(iter(self.addresses6.values()), "")

    def published(self, proto: Optional[str] = None) -> list[PortBinding]:
        """The published ports; a UsageError when there are none."""
        out = [p for p in self.ports if proto is None or p.proto == proto]
        if not out:
            raise UsageError("container %s publishes no port" % self.name)
        return out


def client():
    """A docker SDK client; a DnattraceError saying why when the engine cannot be reached."""
    try:
        import docker
    except ImportError:
        raise DnattraceError("the docker Python package is not installed (pip install docker)") from None
    try:
        c = docker.from_env(version="auto", timeout=10)
        c.ping()
        return c
    except Exception as e:  # the SDK raises several kinds for "no engine"
        raise DnattraceError("cannot reach the Docker engine (%s); is dockerd running?"
                             % str(e).splitlines()[0][:120]) from None


def _info(attrs) -> ContainerInfo:
    st = attrs.get("State", {})
    nets = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ports = []
    for key, binds in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        cport, _, proto = key.partition("/")
        for b in binds or []:
            if ":" in (b.get("HostIp") or ""):
                continue            # the IPv6 twin (::) of a binding: the same host port
            ports.append(PortBinding(int(b["HostPort"]), int(cport), proto or "tcp", b.get("HostIp") or ""))
    return ContainerInfo(name=attrs.get("Name", "").lstrip("/"), id=attrs.get("Id", ""),
                         running=bool(st.get("Running")), pid=int(st.get("Pid") or 0),
                         addresses={n: v.get("IPAddress") for n, v in nets.items() if v.get("IPAddress")},
                         gateways={n: v.get("Gateway") for n, v in nets.items() if v.get("Gateway")},
                         ports=ports,
                         addresses6={n: v.get("GlobalIPv6Address") for n, v in nets.items()
                                     if v.get("GlobalIPv6Address")})


def container(name_or_id: str, dc=None) -> ContainerInfo:
    """The container by name or id; UsageError when there is none."""
    import docker.errors
    dc = dc or client()
    try:
        return _info(dc.api.inspect_container(name_or_id))
    except docker.errors.NotFound:
        raise UsageError("no container named %s" % name_or_id) from None
    except docker.errors.APIError as e:
        raise DnattraceError("Docker engine error for %s: %s" % (name_or_id, e.explanation or e)) from None


def publisher(host_port: int, proto: str = "tcp", dc=None) -> Optional[tuple[ContainerInfo, PortBinding]]:
    """The running container that publishes host_port, and the binding; None when none does. Over the
    engine's unix socket without the SDK when it is one (docker_engine: watch's start-up path)."""
    if dc is None and docker_engine.socket_path():
        listed, inspect = docker_engine.containers(), docker_engine.inspect
        # only the containers whose summary names the port are inspected (one GET each)
        listed = [c for c in listed if any(p.get("PublicPort") == host_port for p in c.get("Ports") or [])]
    else:
        dc = dc or client()
        listed, inspect = dc.api.containers(), dc.api.inspect_container
    for c in listed:
        try:
            info = _info(inspect(c["Id"]))
        except docker_engine.NotFound:      # it went away since the listing
            continue
        for b in info.ports:
            if b.host_port == host_port and b.proto == proto:
                return info, b
    return None
