"""What the user asked about, resolved: a published port, where DNAT sends it, and the namespaces whose
hooks see its packets. One Target for every layer: watch follows its endpoints, the evidence is read
for it and the causes speak of it. watch/resolve.py makes one from --port/--container/--netns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dnattrace import model


@dataclass
class Endpoint:
    addr: Optional[str]      # None: any address
    port: int


@dataclass
class Target:
    proto: str = "tcp"                                      # "tcp" | "udp"
    port: int = 0                                           # the published port (what clients connect to)
    backends: list[Endpoint] = field(default_factory=list)  # where DNAT sends it (empty: a local service)
    container: str = ""                                     # the container, when known
    host_netns: Optional[str] = None                        # path of the host's namespace (None = ours)
    container_netns: Optional[str] = None                   # path of the container's namespace
    dnat_rule: str = ""                                     # the rule text that does the DNAT
    addr: Optional[str] = None                              # --dst: only this published address

    @property
    def proto_num(self) -> int:
        return model.PROTO_NUMBERS[self.proto]

    @property
    def backend(self) -> Optional[Endpoint]:
        """The first place DNAT sends the port to (None: a local service)."""
        return self.backends[0] if self.backends else None

    @property
    def service_addr(self) -> str:
        """The address the service listens on behind the DNAT ("" for a local service)."""
        b = self.backend
        return (b.addr or "") if b else ""

    def backend_for(self, family: int) -> Optional[Endpoint]:
        """Where DNAT sends clients of this IP family (4 or 6): a dual-stack container has an address of
        each; None when the port is not DNATed for that family."""
        return next((b for b in self.backends if b.addr and model.family_of(b.addr) == family), None)

    @property
    def service_port(self) -> int:
        """The port the service listens on: the backend's, or the published one for a local service."""
        b = self.backend
        return b.port if b else self.port

    def endpoints(self) -> list[tuple[int, int, Optional[str]]]:
        """(proto, port, addr) of the service side, before and after DNAT: a packet towards one of these
        is a request, one from it a reply."""
        return [(self.proto_num, self.port, self.addr)] + [(self.proto_num, b.port, b.addr) for b in self.backends]

    def netns_paths(self) -> list[Optional[str]]:
        paths = [self.host_netns]
        if self.container_netns and self.container_netns != self.host_netns:
            paths.append(self.container_netns)
        return paths

    def describe(self) -> str:
        head = "%s :%d" % (self.proto.upper(), self.port)
        if self.container and self.backends:
            b = self.backends[0]
            return '%s is published by container "%s" -> %s' % (head, self.container, ", ".join(
                model.hostport(b.addr, b.port) for b in self.backends))
        if self.backends:
            return "%s is DNATed to %s" % (head, ", ".join(model.hostport(b.addr, b.port) for b in self.backends))
        return "%s (no DNAT for this port: a local service)" % head

    def to_dict(self):
        return {"proto": self.proto, "port": self.port, "container": self.container, "dnat_rule": self.dnat_rule,
                "backends": [{"addr": b.addr, "port": b.port} for b in self.backends]}

    @classmethod
    def from_dict(cls, d):
        return cls(proto=d.get("proto", "tcp"), port=d.get("port", 0), container=d.get("container", ""),
                   dnat_rule=d.get("dnat_rule", ""), backends=[Endpoint(b["addr"], b["port"]) for b in d.get("backends", [])])
