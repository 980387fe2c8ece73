"""Routing decisions replayed: forwarding (per interface, per family), the route lookup with the packet's
own keys through the policy rules, the link and address that carry a connected route, reverse-path and
martian checks, and the reply's way back."""
from __future__ import annotations

import errno
import ipaddress
from typing import Optional

from dnattrace import model
from dnattrace.model import ROUTE, RX
from dnattrace.evidence import conntrack as ct_stats
from dnattrace.evidence import sysctl
from dnattrace.evidence.snapshot import NsEvidence, Snapshot
from dnattrace.diagnose import policy
from dnattrace.diagnose.facts import Facts, host_steps, kv
from dnattrace.diagnose.replay import PERSIST, Cause, Match, Replay


def match_forwarding_off(f: Facts) -> Optional[Match]:
    if f.seen and not f.ingress:
        return None         # made by a socket of the namespace where it ended: sent, never forwarded
    if f.seen and f.dest[0] and f.ns.has_address(f.dest[0]):
        return None         # for an address of the namespace itself: delivered there, never forwarded
    if f.family == 6:
        return _forwarding6_off(f)
    v = f.ns.sysctls
    on = sysctl.forwarding_on(v, f.ingress or None)
    lookup = f.ns.lookup(f.dest[0]) if f.dest[0] else None
    lookup_unreach = lookup is not None and lookup.err == errno.EHOSTUNREACH
    if f.seen:
        if f.journey.outcome in ("delivered", "sent") or (f.drop and f.func != "ip_error"):
            return None     # delivered, forwarded, or dropped by something else: forwarding was not in the way
        routed_error = f.func == "ip_error" or (f.route and f.route.route and f.route.route.err)
        if not (routed_error or lookup_unreach):
            return None
    elif not (f.service_addr and not f.ns.has_address(f.service_addr)):
        return None         # evidence only: matters only when the target must be forwarded
    if on is True or (on is None and not lookup_unreach):
        return None         # forwarding is on for the packet's input interface: the unreachable is a route's
    s = Replay()
    s.add(3, f.func == "ip_error", f.drop_line())
    s.add(2, f.reason == "IP_INADDRERRORS")
    keys = sysctl.forwarding(v, f.ingress or None)
    off = [k for k, val in keys.items() if val == 0]
    s.add(3, bool(off), "; ".join("%s = 0" % k for k in off))
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and (r.local is False or (r.oif and r.oif != "lo")),
          "route %s -> dev %s (must be forwarded)" % (r.dst or f.dest[0], r.oif) if r else "")
    s.add(1, lookup_unreach, str(lookup) if lookup else "")
    glob = sysctl.as_int(v, "net.ipv4.ip_forward") == 0 or sysctl.as_int(v, sysctl.conf_key("all", "forwarding")) == 0
    key = "net.ipv4.ip_forward" if glob or not f.ingress else sysctl.conf_key(f.ingress, "forwarding")
    where = "on this host" if glob else "on %s" % f.ingress
    dest = "%s:%d" % f.dest if f.dest[0] else "its destination"
    return Match(s, "IPv4 forwarding is off %s, so a packet arriving there for %s (not an address of this "
                    "namespace, it must be forwarded) gets an unreachable route and is dropped by ip_error."
                 % (where, dest), [f.ns.prefix() + "sysctl -w %s=1" % key], PERSIST).at("sysctl %s in %s" % (key, f.ns.name))


def _forwarding6_off(f: Facts) -> Optional[Match]:
    """IPv6: the route lookup succeeds whatever forwarding says (the route to the bridge is there); the
    packet reaches ip6_forward, which refuses it while net.ipv6.conf.all.forwarding is 0 and counts it
    as an address error (IP_INADDRERRORS)."""
    v = f.ns.sysctls
    if f.seen and (f.journey.outcome in ("delivered", "sent") or (f.drop and f.func != "ip6_forward")):
        return None
    if not f.seen and not (f.service_addr and not f.ns.has_address(f.service_addr)):
        return None
    if sysctl.forwarding_on(v, f.ingress or None, 6) is not False:
        return None
    s = Replay()
    s.add(3, f.func == "ip6_forward", f.drop_line())
    s.add(2, f.reason == "IP_INADDRERRORS")
    off = [k for k, val in sysctl.forwarding(v, f.ingress or None, 6).items() if val == 0]
    s.add(3, bool(off), "; ".join("%s = 0" % k for k in off))
    r = f.route.route if f.route and f.route.route else None
    s.add(1, r is not None and not r.err and (r.local is False or (r.oif and r.oif != "lo")),
          "route %s -> dev %s (must be forwarded)" % (r.dst or f.dest[0], r.oif) if r else "")
    v4 = sysctl.forwarding_on(v, f.ingress or None, 4)    # other_family_line says what IPv4 clients meet
    dest = model.hostport(*f.dest) if f.dest[0] else "its destination"
    return Match(s, "IPv6 forwarding is off on this host (net.ipv6.conf.all.forwarding = 0%s), so an IPv6 packet "
                    "arriving there for %s (not an address of this namespace, it must be forwarded) is routed, then "
                    "refused and dropped by ip6_forward."
                 % ("; IPv4 forwarding is on" if v4 else "", dest),
                 [f.ns.prefix() + "sysctl -w net.ipv6.conf.all.forwarding=1"],
                 PERSIST + "; on a host that takes its IPv6 address from router advertisements, set "
                 "net.ipv6.conf.<uplink>.accept_ra=2 first, or forwarding turns RA off").at("sysctl net.ipv6.conf.all.forwarding in %s" % f.ns.name)


def _packet_keys(f: Facts) -> tuple[str, Optional[str], str]:
    """(destination, source, input interface) of the failing packet at its route decision."""
    t = f.drop.tuple if f.drop and f.drop.tuple else None
    src = t.src if t else (f.journey.tuples()[0].src if f.journey and f.journey.tuples() else None)
    return f.dest[0], src, f.ingress


def _lost_address(f: Facts, dst: str):
    """The host link that should carry the connected route to dst and holds no address on its subnet:
    the holder of dst (the container) reaches the host through a veth whose peer here is a port of that
    bridge, and its default gateway is the address the bridge had. (link, gateway/len) or None."""
    _looked, holder = f.holder(dst)
    carrier = f.way_to(holder, dst) if holder is not None else None
    if carrier is None:
        return None
    mine = next(l for l in holder.links if any(c.split("/")[0] == dst for c in l.addresses))
    net = next(ipaddress.ip_interface(c).network for c in mine.addresses if c.split("/")[0] == dst)
    if any(ipaddress.ip_interface(c).ip in net for c in carrier.addresses):
        return None
    gw = next((r.split()[2] for r in holder.routes if r.startswith("default via ")), "")
    if not gw or ipaddress.ip_address(gw) not in net:
        gw = str(next(net.hosts()))
    return carrier, "%s/%d" % (gw, net.prefixlen)


def match_no_route(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    r = f.route.route if f.route and f.route.route else None
    route_err = bool(r and r.err)
    if not (f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES") or route_err):
        return None
    if sysctl.forwarding_on(f.ns.sysctls, f.ingress or None, f.family) is False:
        return None         # that is forwarding-off
    s = Replay()
    s.add(2, f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"), f.drop_line())
    s.add(2, route_err, "route lookup for %s failed: %s" % (r.dst, errno.errorcode.get(-r.err, r.err)) if r else "")
    dst, src, iif = _packet_keys(f)
    lookup = f.ns.lookup(dst) if dst else None
    s.add(1, lookup is not None and lookup.err, str(lookup) if lookup else "")
    if not dst or not f.ns.rule_list:
        s.unknown(3, "the policy rules and route tables of %s" % f.ns.name)
        return Match(s, "The kernel has no usable route for %s in %s: the packet cannot be delivered or forwarded."
                     % (dst or "the destination", f.ns.name), obj="the routes of %s" % f.ns.name)
    w = policy.walk(f.ns.rule_list, f.ns.table_routes, dst, src, iif)
    for u in w.unknown:
        s.unknown(1, "whether ip rule %s takes the packet (its selector needs what the journey does not hold)" % u)
    if w.verdict == "route":
        s.contradict("replayed through the policy rules, the lookup for %s from %s iif %s finds %s in table %s"
                     % (dst, src, iif, policy.route_text(w.route), w.table))
        return Match(s, "")
    keys = "%s from %s iif %s" % (dst, src or "?", iif or "?")
    if w.by_policy:
        rule = policy.rule_text(w.rule)
        s.add(3, True, "ip rule %s chose %s for %s" % (rule, "table %s: %s" % (w.table, policy.route_text(w.route))
                                                        if w.route else w.verdict, keys))
        without = policy.walk(f.ns.rule_list, f.ns.table_routes, dst, src, iif, skip=(w.rule["priority"],))
        fix = None
        if without.verdict == "route":
            s.add(1, True, "without it the lookup finds %s in table %s" % (policy.route_text(without.route),
                                                                         without.table))
            fix = [f.ns.prefix() + "ip %srule add from %s to %s iif %s lookup %s pref %d"
                   % ("-6 " if f.family == 6 else "", src or "all", dst, iif, without.table,
                      max(1, w.rule["priority"] - 1))]
        return Match(s, "Policy routing sends the lookup for %s to %s: ip rule %s decides it%s, so the packet gets "
                        "no usable route in %s." % (keys, "table %s" % w.table if w.table else "a %s action" % w.verdict,
                                                    rule, " (table %s has %s)" % (w.table, policy.route_text(w.route))
                                                    if w.route else "", f.ns.name),
                     fix, "or remove or narrow the rule if it was not meant for this traffic",
                     obj="ip rule %s in %s" % (rule, f.ns.name))
    lost = _lost_address(f, dst)
    if lost is not None:
        link, cidr = lost
        s.add(3, True, "%s carries the path to %s but holds no address on its subnet (%s is its gateway)"
              % (link.name, dst, cidr))
        return Match(s, "%s in %s has lost its address %s, so the connected route to %s's subnet is gone and the "
                        "packet gets no route. Give it back its address (Docker: restart the engine, which "
                        "recreates its bridge)." % (link.name, f.ns.name, cidr, dst),
                     [f.ns.prefix() + "ip addr add %s dev %s" % (cidr, link.name)],
                     obj="the address of %s in %s" % (link.name, f.ns.name))
    s.add(1, w.verdict == "none", "no table the rules reach has a route to %s" % dst)
    return Match(s, "No table the policy rules of %s reach has a route to %s: the packet cannot be delivered or "
                    "forwarded. Add a route to it (or fix the NAT target)." % (f.ns.name, dst),
                 obj="the routes of %s" % f.ns.name)


def _down_link_for(f: Facts):
    """An administratively down link whose own subnet holds the packet's destination: its connected
    route went away when it went down."""
    dst = f.dest[0]
    if not dst:
        return None
    for l in f.ns.links:
        if l.up:
            continue
        for cidr in l.addresses:
            if ipaddress.ip_address(dst) in ipaddress.ip_interface(cidr).network:
                return l
    return None


def match_link_down(f: Facts) -> Optional[Match]:
    if not f.seen:
        return None
    r = f.route.route if f.route and f.route.route else None
    if not (f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES") or (r and r.err)):
        return None
    link = _down_link_for(f)
    if link is None:
        return None
    s = Replay()
    s.add(3, f.func == "ip_error" or f.reason in ("IP_INNOROUTES", "IP_OUTNOROUTES"), f.drop_line())
    s.add(3, True, "link %s (%s%s) is administratively DOWN; %s is in its subnet %s"
          % (link.name, link.kind or "device", ", state " + link.state if link.state else "", f.dest[0],
             ", ".join(link.addresses)))
    lookup = f.ns.lookup(f.dest[0])
    s.add(1, lookup is not None and lookup.err, str(lookup) if lookup else "")
    s.note(kv(f.ns.sysctls, sysctl.conf_key(f.ingress or "all", "forwarding")))
    return Match(s, "%s is down in %s, so the route to its subnet (where %s lives) is gone: the packet gets no "
                    "route and the sender an ICMP unreachable. Bring the link up (Docker: restart the engine, "
                    "which recreates its bridge)." % (link.name, f.ns.name, f.dest[0]),
                 [f.ns.prefix() + "ip link set %s up" % link.name]).at("link %s in %s" % (link.name, f.ns.name))


def match_rp_filter(f: Facts) -> Optional[Match]:
    if f.reason != "IP_RPFILTER":
        return None
    rp = sysctl.rp_filter(f.ns.sysctls, f.ingress or None)
    s = Replay()
    s.add(3, True, f.drop_line())
    s.add(2, rp["effective"] == 1, "rp_filter on %s: all = %s, %s = %s (effective %s, strict)" % (
        f.ingress or "?", rp["all"], f.ingress or "if", rp["if"], rp["effective"]))
    src = f.drop.tuple.src if f.drop and f.drop.tuple else "the source"
    iface = f.ingress or "all"
    return Match(s, "Strict reverse-path filtering on %s dropped the packet: the route back to %s does not "
                    "leave by %s. Use loose mode (2) or fix the routes." % (iface, src, iface),
                 [f.ns.prefix() + "sysctl -w %s=2" % sysctl.conf_key(iface, "rp_filter")],
                 "the cure is a route back to %s by %s; %s" % (src, iface, PERSIST), workaround=True).at("sysctl %s in %s" % (sysctl.conf_key(iface, "rp_filter"), f.ns.name))


MARTIAN_REASONS = ("IP_LOCAL_SOURCE", "IP_LOCALNET", "IP_INVALID_SOURCE", "IP_INVALID_DEST")


def match_martian_source(f: Facts) -> Optional[Match]:
    if f.reason not in MARTIAN_REASONS:
        return None
    v, iface = f.ns.sysctls, f.ingress or "all"
    s = Replay()
    s.add(3, True, f.drop_line())
    src = f.drop.tuple.src if f.drop and f.drop.tuple else ""
    fix, note = None, ""
    if f.reason == "IP_LOCALNET":
        key = sysctl.conf_key(iface, "route_localnet")
        s.add(2, sysctl.as_int(v, key) == 0, kv(v, key))
        text = "a loopback (127.0.0.0/8) address arrived on %s, which the kernel refuses unless route_localnet " \
               "is set" % iface
        fix = [f.ns.prefix() + "sysctl -w %s=1" % key]
    elif f.reason == "IP_LOCAL_SOURCE":
        key = sysctl.conf_key(iface, "accept_local")
        s.add(2, f.ns.has_address(src) if src else False, "%s is an address of %s itself" % (src, f.ns.name))
        s.note(kv(v, key))
        text = "the source address %s is one of this namespace's own addresses (a duplicate or spoofed " \
               "address)" % (src or "?")
        note = "better: give the client an address of its own; accepting it: sysctl -w %s=1" % key
    else:
        text = "the source or destination address is invalid (martian) on %s" % iface
    return Match(s, "The packet was dropped as a martian: %s." % text, fix, note).at("the source address %s on %s in %s" % (src or "?", iface, f.ns.name))


def match_route_localnet(f: Facts) -> Optional[Match]:
    if not f.seen or f.func != "nf_hook_slow" or f.hook != "OUTPUT":
        return None
    tuples = f.journey.tuples()
    if not tuples or not ipaddress.ip_address(tuples[0].src).is_loopback:
        return None
    svc = f.service_addr
    dev = next((l for l in f.ns.links if svc and not ipaddress.ip_address(svc).is_loopback and any(
        ipaddress.ip_address(svc) in ipaddress.ip_interface(c).network for c in l.addresses)), None)
    if dev is None:
        return None
    key = sysctl.conf_key(dev.name, "route_localnet")
    off = sysctl.as_int(f.ns.sysctls, key) == 0
    s = Replay()
    s.add(3, True, f.drop_line() + " on the OUTPUT hook (locally generated)")
    s.add(2, True, "source %s is a loopback address; the DNAT target %s is reached by %s" % (tuples[0].src, svc, dev.name))
    s.add(3, off, kv(f.ns.sysctls, key))
    s.add(1, not ct_stats.is_full(f.ns.conntrack), "conntrack is not full (count %s of %s)"
          % (f.ns.conntrack.get("count"), f.ns.conntrack.get("max")))
    fix = [f.ns.prefix() + "sysctl -w %s=1" % key]
    nat = f.rules.chain("nat", "POSTROUTING") if f.rules else None
    if nat is not None and not any("127.0.0.0/8" in r.text and r.target == "MASQUERADE" for r in nat.rules):
        fix.append(f.ns.prefix() + "iptables -t nat -I POSTROUTING -s 127.0.0.0/8 -o %s -j MASQUERADE" % dev.name)
    return Match(s, "A connection to %s:%d from the host was DNATed to %s, but after the DNAT the kernel must route "
                    "a packet with loopback source %s out of %s, which it refuses unless route_localnet is set there: "
                    "the NAT hook drops it." % (tuples[0].dst, tuples[0].dport, svc, tuples[0].src, dev.name),
                 fix, "the source must also be masqueraded (-s 127.0.0.0/8 -o %s -j MASQUERADE); the cure is to connect "
                 "to the host's own address instead of 127.0.0.1; %s" % (dev.name, PERSIST), workaround=True).at("sysctl %s in %s" % (key, f.ns.name))


def match_reply_no_route(f: Facts) -> Optional[Match]:
    if not f.seen or f.conn.answered:
        return None
    done = f.delivered_to_listener_ns()
    if done is None or any(j.outcome == "dropped" for j in f.conn.requests):
        return None
    ns = f.snapshot.by_inode(done.end_step.netns)
    d = f.delta.by_inode(ns.inode) if f.delta else None
    noroutes = (d.snmp.get("IpOutNoRoutes", 0) if d else 0)
    client = f.conn.key.src
    lookup = ns.lookup(client)
    s = Replay()
    s.add(3, True, "the request was delivered in %s, but no reply ever left" % ns.name)
    s.add(3, noroutes > 0, "IpOutNoRoutes +%d in %s" % (noroutes, ns.name))
    s.add(2, lookup is not None and lookup.err, str(lookup) if lookup else "")
    s.add(1, d is not None and d.snmp.get("TcpExtListenDrops", 0) > 0,
          "TcpExtListenDrops +%d" % (d.snmp.get("TcpExtListenDrops", 0) if d else 0))
    if s.got <= 3:
        return None     # delivered and silent, but nothing says "no route": not this cause
    s.note("routes in %s: %s" % (ns.name, "; ".join(ns.routes) or "none"))
    gw = _gateway_for(f.snapshot, ns)
    fix = [ns.prefix() + "ip route add default via %s" % gw] if gw else None
    return Match(s, "The service in %s got the request, but it has no route back to the client %s, so its "
                    "reply is never sent (no packet is dropped: the reply is never built)." % (ns.name, client),
                 fix).at("the routes of %s (no route to %s)" % (ns.name, client))


def _gateway_for(snap: Snapshot, ns: NsEvidence) -> str:
    """The host's address on the subnet the namespace is attached to: its natural default gateway."""
    if ns is snap.host:
        return ""
    for own in (c for l in ns.links for c in l.addresses):
        net = ipaddress.ip_interface(own).network
        if net.prefixlen >= 31 or ipaddress.ip_interface(own).ip.is_loopback:
            continue
        for l in snap.host.links:
            for c in l.addresses:
                if ipaddress.ip_interface(c).ip in net:
                    return c.split("/")[0]
    return ""


def _rule_for_table(f: Facts, table: int) -> Optional[tuple[int, str]]:
    """The policy routing rule (pref, text) that sends lookups to `table`."""
    for line in f.ns.ip_rules:
        pref, _, text = line.partition(":")
        words = text.split()
        if "lookup" in words and words[words.index("lookup") + 1:][:1] == [str(table)] and pref.strip().isdigit():
            return int(pref), text.strip()
    return None


def match_reply_policy_route(f: Facts) -> Optional[Match]:
    j = f.journey
    if not f.seen or j.direction != "reply" or f.drop is None or f.conn is None:
        return None
    rt = next((s for s in reversed(host_steps(f, j, ROUTE)) if s.route and s.route.oif and not s.route.err
               and not s.route.reverse and s.route.dst == f.conn.key.src), None)
    req_rx = next((s for r in f.conn.requests for s in host_steps(f, r, RX)), None)
    orig = next((s.ct.orig for s in j.steps if s.ct and s.ct.orig), None)
    # where the request came in; when only the reply was seen (a SYN-ACK retransmitted for an attempt made
    # before the capture), the link that holds the address the client connected to
    req_if = req_rx.ifname if req_rx else next(
        (l.name for l in f.ns.links if orig and any(c.split("/")[0] == orig.dst for c in l.addresses)), "")
    if rt is None or not req_if or rt.route.oif == req_if or rt.route.table in (254, 255):
        return None         # the reply leaves where the request came in, or by the main table
    rule = _rule_for_table(f, rt.route.table)
    client = orig.src if orig else f.conn.key.src
    s = Replay()
    s.add(3, True, f.drop_line())
    s.add(3, True, "the request came in on %s; its reply was routed by table %d to %s%s"
          % (req_if, rt.route.table, rt.route.oif, " via %s" % rt.route.gateway if rt.route.gateway else ""))
    s.add(2, rule is not None, "ip rule %d: %s" % rule if rule else "")
    s.note("routes in %s (main): %s" % (f.ns.name, "; ".join(f.ns.routes)))
    fix = None
    if rule is not None:
        inl = f.ns.link(req_if)
        net = next((str(ipaddress.ip_interface(c).network) for c in (inl.addresses if inl else [])
                    if ipaddress.ip_address(client) in ipaddress.ip_interface(c).network), client + "/32")
        fix = [f.ns.prefix() + "ip rule add iif %s to %s lookup main pref %d"
               % (f.ingress or rt.ifname, net, max(1, rule[0] - 1))]
    return Match(s, "Policy routing sends the reply out of %s (table %d), not back out of %s where the request came "
                    "in: the reply to %s takes another uplink and dies there. Route the replies of inbound "
                    "connections back the way they came." % (rt.route.oif, rt.route.table, req_if, client),
                 fix, "better for every client: mark inbound connections and route their replies by the mark "
                      "(iptables -t mangle ... CONNMARK --set-mark / --restore-mark; ip rule add fwmark 1 lookup main)").at("ip rule %d: %s in %s" % (rule + (f.ns.name,)) if rule else "table %d in %s" % (rt.route.table, f.ns.name))


def _cannot_send(link) -> bool:
    """A device up without a carrier, which drops whatever is queued to it (a tun no process has open: its
    qdisc stays noop). Not a bridge: one whose ports are down has no carrier either, but the route to it
    is right and the port is what is wrong (layer 2's to say); not a device set down (link-down's)."""
    return link is not None and link.up and link.kind != "bridge" and link.state in ("DOWN", "LOWERLAYERDOWN",
                                                                                     "NOTPRESENT")


def match_misrouted(f: Facts) -> Optional[Match]:
    """The route decision sent the packet away from where its destination is: to a device that cannot send,
    or by another link than the one that leads to the namespace holding the destination. Replayed through
    the policy rules with the packet's own keys, the rule and table that chose that path are named."""
    if not f.seen or f.route is None or f.route.route is None or f.route.route.err or not f.route.route.oif:
        return None
    if f.journey.outcome in ("delivered", "sent") and f.conn is not None and not f.conn.replies:
        pass                # sent out of the wrong link: the failure shows as no reply
    elif f.drop is None:
        return None
    r = f.route.route
    _dst, src, iif = _packet_keys(f)
    dst = r.dst or _dst             # what the route decision was made for (a reply's is its client)
    out = f.ns.link(r.oif)
    looked, holder = f.holder(dst) if dst else (False, None)
    way = f.way_to(holder, dst) if holder is not None else None
    dead = _cannot_send(out)
    # the route's device holding an address on dst's subnet is the connected route, right as a route: then
    # the holder's attachment is what is astray (layer2's to say)
    connected = out is not None and any(ipaddress.ip_address(dst) in ipaddress.ip_interface(c).network
                                        for c in out.addresses)
    astray = way is not None and way.name != r.oif and not connected
    if not (dead or astray):
        return None
    s = Replay()
    s.add(2, f.drop is not None, f.drop_line())
    s.add(3, True, "route %s from %s iif %s -> dev %s%s (table %d)" % (dst, src or "?", iif or "?", r.oif,
                                                                       " via %s" % r.gateway if r.gateway else "", r.table))
    if dead:
        s.add(2, True, "%s cannot send: %s%s" % (r.oif, "administratively down" if not out.up else "state " + out.state,
                                                 " (no carrier)" if out.up else ""))
    if astray:
        s.add(3, True, "%s holds %s, reached here by %s, not by %s" % (holder.name, dst, way.name, r.oif))
    elif not looked:
        s.unknown(1, "which namespace on this host holds %s" % dst)
    w = policy.walk(f.ns.rule_list, f.ns.table_routes, dst, src, iif) if f.ns.rule_list else None
    if w is not None and w.rule is not None and w.by_policy:
        rule = policy.rule_text(w.rule)
        s.add(2, True, "ip rule %s chose table %s: %s" % (rule, w.table or w.verdict, policy.route_text(w.route)))
        without = policy.walk(f.ns.rule_list, f.ns.table_routes, dst, src, iif, skip=(w.rule["priority"],))
        fix = None
        if without.verdict == "route" and (way is None or without.route.get("dev") == way.name):
            fix = [f.ns.prefix() + "ip %srule add from %s to %s iif %s lookup %s pref %d"
                   % ("-6 " if f.family == 6 else "", src or "all", dst, iif, without.table,
                      max(1, w.rule["priority"] - 1))]
        return Match(s, "Policy routing sends the packet for %s out of %s: ip rule %s sends the lookup to table %s, "
                        "whose route%s%s, instead of %s." % (
                            dst, r.oif, rule, w.table, " covers %s" % w.route.get("dst") if w.route else "",
                            " (%s cannot send)" % r.oif if dead else "",
                            "by %s to %s" % (way.name, holder.name) if way else "where the destination is"),
                     fix, "or narrow the rule (or the table's route) so it does not take this traffic",
                     obj="ip rule %s and table %s in %s" % (rule, w.table, f.ns.name))
    if w is None:
        s.unknown(2, "the policy rules and route tables of %s" % f.ns.name)
    lost = _lost_address(f, dst) if astray else None
    if lost is not None:
        link, cidr = lost
        s.add(2, True, "%s holds no address on %s's subnet (%s is its gateway), so its connected route is gone"
              % (link.name, dst, cidr))
        return Match(s, "%s in %s has lost its address %s: the connected route to %s's subnet went with it, so "
                        "the packet follows %s out of %s instead of %s." % (
                            link.name, f.ns.name, cidr, dst, "the default route" if r.gateway else "another route",
                            r.oif, link.name),
                     [f.ns.prefix() + "ip addr add %s dev %s" % (cidr, link.name)],
                     obj="the address of %s in %s" % (link.name, f.ns.name))
    return Match(s, "The route for %s in %s leads out of %s%s%s." % (
        dst, f.ns.name, r.oif, ", which cannot send" if dead else "",
        ", not by %s where %s holds it" % (way.name, holder.name) if astray else ""),
        obj="the route to %s in table %d of %s" % (dst, r.table, f.ns.name))


def _refute_forwarding_off(f: Facts) -> Optional[str]:
    v = f.ns.sysctls
    if sysctl.forwarding_on(v, f.ingress or None, f.family):
        keys = sysctl.forwarding(v, f.ingress or None, f.family)
        return "forwarding is on: " + "; ".join("%s = %s" % kv for kv in keys.items() if kv[1] is not None)
    return None


def _refute_rp_filter(f: Facts) -> Optional[str]:
    rp = sysctl.rp_filter(f.ns.sysctls, f.ingress or None)
    if f.family == 4 and rp.get("effective") is not None and rp["effective"] != 1:    # IPv6 has no rp_filter
        return "rp_filter is not strict on %s (effective %s)" % (f.ingress or "all", rp["effective"])
    return None


def _refute_no_route(f: Facts) -> Optional[str]:
    addr = f.dest[0]
    lookup = f.ns.lookup(addr) if addr else None
    if lookup is not None and not lookup.err:
        return "the route lookup for %s succeeds in %s (%s)" % (addr, f.ns.name, lookup)
    return None


CAUSES = (
    Cause("forwarding-off", "IP forwarding is off (for the packet's family)", match_forwarding_off,
          refute=_refute_forwarding_off),
    Cause("misrouted", "The route sends it away from its destination", match_misrouted,
          defers_to=("reply-policy-route", "link-down", "bridge-port-down")),
    Cause("no-route", "No route can deliver or forward it", match_no_route, defers_to=("link-down",),
          refute=_refute_no_route),
    Cause("rp-filter", "Reverse-path filtering drops it", match_rp_filter, refute=_refute_rp_filter),
    Cause("martian-source", "Martian or local source address", match_martian_source),
    Cause("reply-no-route", "The reply cannot be routed back", match_reply_no_route),
    Cause("link-down", "The interface towards the destination is down", match_link_down),
    Cause("route-localnet", "Loopback source routed out after DNAT (route_localnet)", match_route_localnet),
    Cause("reply-policy-route", "Policy routing sends the reply out of another uplink", match_reply_policy_route),
)
