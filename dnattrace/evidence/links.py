"""Links, addresses, routes and neighbours of a namespace, read over rtnetlink (pyroute2).

The route lookup asks the kernel the question the packet asked: RTM_GETROUTE with the input interface
and source, which runs the input path (ip_route_input) and so answers with the same error the packet got
(EHOSTUNREACH when forwarding is off on that interface, ENETUNREACH when there is no route).
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from dnattrace import forked
from dnattrace.netns.enter import entered

NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
              0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT", 0x00: "NONE"}
RTN_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
             7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}


@dataclass
class Link:
    name: str
    index: int
    state: str                      # operstate: UP, DOWN, LOWERLAYERDOWN, UNKNOWN
    up: bool                        # administratively up (IFF_UP)
    kind: str = ""                  # veth, bridge, ... ("" for physical/loopback)
    master: str = ""                # bridge the link is a port of
    addresses: list[str] = field(default_factory=list)   # IPv4 CIDRs
    mtu: int = 0
    peer: int = 0                   # a veth's peer ifindex (IFLA_LINK), in the namespace its link-netnsid names


@dataclass
class RouteResult:
    dst: str
    iif: str = ""                   # input interface the lookup was made for ("" = output lookup)
    src: str = ""
    err: int = 0                    # 0 or a positive errno (EHOSTUNREACH, ENETUNREACH, ...)
    error: str = ""                 # strerror of err
    type: str = ""                  # unicast, local, unreachable, ...
    oif: str = ""
    gateway: str = ""
    table: int = 0

    @property
    def local(self) -> bool:
        return self.type == "local"

    def __str__(self):
        head = "route %s%s%s" % (self.dst, " from %s" % self.src if self.src else "",
                                 " iif %s" % self.iif if self.iif else "")
        if self.err:
            return "%s: %s" % (head, self.error)
        return "%s: %s%s dev %s table %d" % (head, self.type,
                                             " via %s" % self.gateway if self.gateway else "", self.oif or "-",
                                             self.table)


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def links(netns=None) -> list[Link]:
    """Every link with its state, kind, bridge master and addresses (IPv4, then IPv6 but link-local ones).

    A long-lived watch reads its namespaces' addresses with this at start (watch.resolve.local_addresses) and
    must not keep pyroute2's imports (about 20 MB): there it runs in a child process (dnattrace.forked)."""
    return forked.lookup(_links, netns)


def _links(netns=None) -> list[Link]:
    with entered(netns):
        with _ipr() as ipr:
            raw = ipr.get_links()
            addrs = list(ipr.get_addr(family=2)) + [a for a in ipr.get_addr(family=10)
                                                    if not str(a.get_attr("IFA_ADDRESS") or "").startswith("fe80:")]
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in raw}
    out = {}
    for m in raw:
        info = m.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else ""
        master = m.get_attr("IFLA_MASTER")
        out[m["index"]] = Link(name=names[m["index"]], index=m["index"], state=m.get_attr("IFLA_OPERSTATE") or "",
                               up=bool(m["flags"] & 1), kind=kind or "", master=names.get(master, "") if master else "",
                               mtu=m.get_attr("IFLA_MTU") or 0,
                               peer=(m.get_attr("IFLA_LINK") or 0) if kind == "veth" else 0)
    for a in addrs:
        if a["index"] in out:
            out[a["index"]].addresses.append("%s/%d" % (a.get_attr("IFA_ADDRESS"), a["prefixlen"]))
    return list(out.values())


def _guess_src(link_list: list[Link], iif: str, family: int = 4) -> str:
    """A plausible source for a packet arriving on iif: another host of iif's own subnet, of the family
    of the destination asked about."""
    for l in link_list:
        if l.name == iif:
            for cidr in l.addresses:
                itf = ipaddress.ip_interface(cidr)
                if itf.version != family:
                    continue
                for host in itf.network.hosts():
                    if host != itf.ip:
                        return str(host)
    return "2001:db8::1" if family == 6 else "192.0.2.1"


def route_get(dst: str, iif: Optional[str] = None, src: Optional[str] = None, netns=None) -> RouteResult:
    """The kernel's route for dst, as an input lookup from iif (with src) when iif is given, else as
    an output lookup. Errors (EHOSTUNREACH, ENETUNREACH, EINVAL for a martian) come back in .err."""
    from pyroute2.netlink.exceptions import NetlinkError
    res = RouteResult(dst=dst, iif=iif or "", src=src or "")
    with entered(netns):
        with _ipr() as ipr:
            kw = {"dst": dst}
            if iif:
                idx = ipr.link_lookup(ifname=iif)
                if not idx:
                    res.err, res.error = errno.ENODEV, "no interface %s" % iif
                    return res
                kw["iif"] = idx[0]
                if not src:
                    src = res.src = _guess_src(_links(None), iif, 6 if ":" in dst else 4)
            if src:
                kw["src"] = src
            try:
                msg = ipr.route("get", **kw)[0]
            except NetlinkError as e:
                res.err, res.error = e.code, errno.errorcode.get(e.code, str(e.code))
                return res
            oif = msg.get_attr("RTA_OIF")
            names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
    res.type = RTN_TYPES.get(msg["type"], str(msg["type"]))
    res.oif = names.get(oif, "") if oif else ""
    res.gateway = msg.get_attr("RTA_GATEWAY") or ""
    res.table = msg.get_attr("RTA_TABLE") or msg["table"]
    return res


def neighbour(addr: str, netns=None) -> Optional[dict]:
    """Neighbour entry for addr: {"addr", "dev", "state", "lladdr"}; None when there is none."""
    with entered(netns):
        with _ipr() as ipr:
            entries = ipr.get_neighbours(family=10 if ":" in addr else 2, dst=addr)
            names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
    for n in entries:
        if n.get_attr("NDA_DST") == addr:
            st = n["state"]
            state = "|".join(v for k, v in NUD_STATES.items() if k and st & k) or "NONE"
            return {"addr": addr, "dev": names.get(n["ifindex"], ""), "state": state,
                    "lladdr": n.get_attr("NDA_LLADDR") or ""}
    return None


def local_addresses(link_list: list[Link]) -> list[str]:
    return [c.split("/")[0] for l in link_list for c in l.addresses]


def routes(netns=None) -> list[str]:
    """The main table's routes as short lines ("default via 172.17.0.1 dev eth0", "172.17.0.0/16 dev
    docker0"), IPv4 then IPv6 (link-local and multicast ones left out), enough to show whether a
    namespace can reach a client at all."""
    with entered(netns):
        with _ipr() as ipr:
            raw = list(ipr.get_routes(family=2, table=254)) + [
                r for r in ipr.get_routes(family=10, table=254)
                if not str(r.get_attr("RTA_DST") or "").startswith(("fe80:", "ff00:"))]
            names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
    out = []
    for r in raw:
        dst = r.get_attr("RTA_DST")
        line = "%s/%d" % (dst, r["dst_len"]) if dst else "default"
        gw, oif = r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")
        line += (" via %s" % gw if gw else "") + (" dev %s" % names.get(oif, oif) if oif else "")
        if r["type"] != 1:
            line = "%s %s" % (RTN_TYPES.get(r["type"], r["type"]), line)
        out.append(line)
    return out


def ip_rules(netns=None) -> list[str]:
    """The IPv4 policy routing rules as `ip rule` prints them ("100: from all iif docker0 lookup 100")."""
    import subprocess
    prefix = ["nsenter", "--net=%s" % netns] if netns else []
    out = subprocess.run(prefix + ["ip", "-4", "rule", "show"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return [" ".join(l.split()) for l in out.splitlines() if l.strip()]


def _ip_json(netns, *args) -> list:
    import json
    import subprocess
    prefix = ["nsenter", "--net=%s" % netns] if netns else []
    out = subprocess.run(prefix + ["ip", "-j"] + list(args), capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return json.loads(out or "[]")


def policy(netns=None) -> tuple[list[dict], list[dict]]:
    """(rules, routes): every policy rule and every route of every table, both families, as `ip -j` gives
    them, each with its "family" (4 or 6): what a replay of the route lookup through the rules needs."""
    rules, routes = [], []
    for fam in (4, 6):
        rules += [dict(r, family=fam) for r in _ip_json(netns, "-%d" % fam, "rule", "show")]
        routes += [dict(r, family=fam) for r in _ip_json(netns, "-%d" % fam, "route", "show", "table", "all")]
    return rules, routes
