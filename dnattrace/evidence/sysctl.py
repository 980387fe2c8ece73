"""IPv4 and IPv6 sysctls that decide whether a packet is forwarded, filtered or accepted, read per namespace.

Keys are shown the way `sysctl` shows them (net.ipv4.conf.eth0.forwarding); an interface name with a dot
is written with a slash in a key, as sysctl(8) does.
"""
from __future__ import annotations

import os
from typing import Optional

from dnattrace.netns.enter import entered

CONF_KEYS = ("forwarding", "rp_filter", "accept_local", "route_localnet")
# IPv6 forwards when conf.all.forwarding is 1 (ip6_forward reads only that one; an interface's own
# `forwarding` makes it a router towards its link, not a forwarder), or, since 6.17, when the ingress
# interface has force_forwarding; disable_ipv6 turns a link's IPv6 off altogether.
CONF6_KEYS = ("forwarding", "force_forwarding", "disable_ipv6")
GLOBAL_KEYS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
               "net.netfilter.nf_conntrack_count", "net.netfilter.nf_conntrack_max")


def conf_key(ifname: str, name: str, family: int = 4) -> str:
    """net.ipv4.conf.<if>.<name> (family 6: net.ipv6.conf...), for an interface, "all" or "default"."""
    return "net.ipv%d.conf.%s.%s" % (family, ifname.replace(".", "/"), name)


def _path(key: str) -> str:
    return "/proc/sys/" + "/".join(p.replace("/", ".") for p in key.split("."))


def _read_here(key: str) -> Optional[str]:
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except (FileNotFoundError, PermissionError):
        return None


def read(key: str, netns=None) -> Optional[str]:
    """The value of one sysctl in `netns`, or None when the key does not exist there."""
    with entered(netns):
        return _read_here(key)


def read_all(netns=None, ifnames=None) -> dict[str, str]:
    """Every key dnattrace uses as evidence: globals, all/default and each interface's conf (all interfaces
    of the namespace when ifnames is None). Keys that do not exist (no br_netfilter) are left out."""
    out = {}
    with entered(netns):
        if ifnames is None:
            try:
                ifnames = sorted(os.listdir("/proc/sys/net/ipv4/conf"))
            except FileNotFoundError:
                ifnames = []
        keys = list(GLOBAL_KEYS)
        for name in ["all", "default"] + [n for n in ifnames if n not in ("all", "default")]:
            keys += [conf_key(name, k) for k in CONF_KEYS] + [conf_key(name, k, 6) for k in CONF6_KEYS]
        for key in keys:
            v = _read_here(key)
            if v is not None:
                out[key] = v
    return out


def as_int(values: dict, key: str, default: Optional[int] = None) -> Optional[int]:
    try:
        return int(values[key])
    except (KeyError, ValueError):
        return default


def forwarding(values: dict, ifname: Optional[str] = None, family: int = 4) -> dict[str, Optional[int]]:
    """Forwarding as the kernel decides it: the ingress interface's own flag (conf.all writes propagate
    to every interface); ip_forward is an alias of conf.all.forwarding. IPv6: conf.all.forwarding, and
    the interface's force_forwarding where the kernel has it."""
    if family == 6:
        out = {conf_key("all", "forwarding", 6): as_int(values, conf_key("all", "forwarding", 6))}
        if ifname and conf_key(ifname, "force_forwarding", 6) in values:
            out[conf_key(ifname, "force_forwarding", 6)] = as_int(values, conf_key(ifname, "force_forwarding", 6))
        return out
    out = {
        "net.ipv4.ip_forward": as_int(values, "net.ipv4.ip_forward"),
        conf_key("all", "forwarding"): as_int(values, conf_key("all", "forwarding")),
    }
    if ifname:
        out[conf_key(ifname, "forwarding")] = as_int(values, conf_key(ifname, "forwarding"))
    return out


def forwarding_on(values: dict, ifname: Optional[str] = None, family: int = 4) -> Optional[bool]:
    """Would a packet arriving on ifname be forwarded? None when unknown."""
    if family == 6:
        v = as_int(values, conf_key("all", "forwarding", 6))
        forced = bool(ifname) and as_int(values, conf_key(ifname, "force_forwarding", 6)) == 1
        return True if forced else None if v is None else v == 1
    if ifname and conf_key(ifname, "forwarding") in values:
        return as_int(values, conf_key(ifname, "forwarding")) == 1
    v = as_int(values, conf_key("all", "forwarding"), as_int(values, "net.ipv4.ip_forward"))
    return None if v is None else v == 1


def rp_filter(values: dict, ifname: Optional[str] = None) -> dict[str, Optional[int]]:
    """rp_filter for all and the interface; the kernel applies the larger (effective = max(all, if))."""
    a = as_int(values, conf_key("all", "rp_filter"))
    i = as_int(values, conf_key(ifname, "rp_filter")) if ifname else None
    eff = max([v for v in (a, i) if v is not None], default=None)
    return {"all": a, "if": i, "effective": eff}
