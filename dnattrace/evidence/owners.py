"""Who wrote a table or chain: the name each tool gives its own, as their sources write them.

A fix must be written in the owner's language: firewalld, ufw, Docker and the ban tools rewrite their
rules (on reload, restart or the next ban), so a raw `nft`/`iptables` edit of their rules is undone.
  Docker: DOCKER, DOCKER-USER, DOCKER-ISOLATION-STAGE-*, DOCKER-FORWARD (iptables); table docker-bridges (nftables backend)
  Podman/netavark: NETAVARK_* / NETAVARK-* chains (iptables driver); table inet netavark (nftables driver)
  firewalld: table inet firewalld (nftables backend); *_direct, *_ZONES, IN_/FWD_/PRE_/POST_<zone> (iptables backend)
  ufw: ufw-* and ufw6-* chains
  kube-proxy: KUBE-* chains; table ip/ip6 kube-proxy (nftables mode)
  CNI plugins: CNI-* (portmap, firewall), cali-* (Calico), FLANNEL-* (flannel)
  CrowdSec firewall bouncer: table ip crowdsec / ip6 crowdsec6, chain crowdsec-chain; CROWDSEC_CHAIN (iptables)
  fail2ban: table inet f2b-table, chains f2b-* (nftables and iptables actions)
  nftables: a table /etc/nftables.conf (or a file it includes) declares
"""
from __future__ import annotations

import glob
import os
import re

OWNERS = ("docker", "podman", "firewalld", "ufw", "kube-proxy", "cni", "crowdsec", "fail2ban", "nftables", "unknown")

TABLE_OWNERS = {"docker-bridges": "docker", "docker": "docker", "netavark": "podman", "firewalld": "firewalld",
           "kube-proxy": "kube-proxy", "crowdsec": "crowdsec", "crowdsec6": "crowdsec", "f2b-table": "fail2ban",
           "cni_plugins_masquerade": "cni"}
_CHAINS = (
    (re.compile(r"^DOCKER(-|$)"), "docker"),
    (re.compile(r"^NETAVARK"), "podman"),
    (re.compile(r"^ufw6?-"), "ufw"),
    (re.compile(r"^KUBE-"), "kube-proxy"),
    (re.compile(r"^(CNI-|cali-|FLANNEL-)"), "cni"),
    (re.compile(r"^(crowdsec|CROWDSEC)"), "crowdsec"),
    (re.compile(r"^f2b-"), "fail2ban"),
    (re.compile(r"^(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING)_(direct|ZONES|ZONES_SOURCE|POLICIES\w*)$|"
                r"^(IN|FWD|FWDI|FWDO|PRE|POST)_[A-Za-z0-9-]+(_allow|_deny|_log|_pre|_post)?$"), "firewalld"),
)
NFTABLES_CONF = "/etc/nftables.conf"
_DECL = re.compile(r"^\s*(?:add\s+|create\s+)?table\s+(?:(ip|ip6|inet|arp|bridge|netdev)\s+)?([\w.-]+)", re.M)
_INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"', re.M)


def of_chain(name: str) -> str:
    """The owner a chain's name tells (user chains of iptables, and nft chains), or "unknown"."""
    for pattern, owner in _CHAINS:
        if pattern.search(name):
            return owner
    return "unknown"


def of_table(table, native: bool = False) -> str:
    """The owner of an nft table (nftables.NftTable): by its name, else by the names of its chains (an
    iptables table is shared: the first owner among its user chains), else nftables.conf's when it
    declares it."""
    if table.name in TABLE_OWNERS:
        return TABLE_OWNERS[table.name]
    if native:
        return "nftables"
    for name in table.chains:
        owner = of_chain(name)
        if owner != "unknown":
            return owner
    return "unknown"


def of_iptables(chains) -> str:
    """The owner of an iptables base chain: the first owner among the chains it can reach."""
    for name in chains:
        owner = of_chain(name)
        if owner != "unknown":
            return owner
    return "unknown"


def native_tables(path: str = NFTABLES_CONF) -> list[str]:
    """"family name" of every table the host's nftables.conf (and what it includes) declares."""
    out, todo, seen = [], [path], set()
    while todo:
        p = todo.pop()
        if p in seen or len(seen) > 50:
            continue
        seen.add(p)
        try:
            text = open(p).read(1 << 20)
        except OSError:
            continue
        out += ["%s %s" % (fam or "ip", name) for fam, name in _DECL.findall(text)]
        for inc in _INCLUDE.findall(text):
            todo += glob.glob(inc if os.path.isabs(inc) else os.path.join(os.path.dirname(p), inc))
    return sorted(set(out))
