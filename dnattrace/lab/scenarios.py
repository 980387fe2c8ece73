"""The lab's scenario catalogue, as data: what each scenario breaks and its ground truth.

The ground truth is what the tests hold `diagnose` to: the cause id it must name, and where the kernel
frees the packet (function, drop reason, and the namespace role where it happens: "host" is the namespace
that owns the published port, "container" the one behind the bridge). The drop sites were measured on the
development kernel (6.18, iptables-nft) with the classic skb:kfree_skb tracepoint; tests/test_lab.py
re-measures them on every run, so a kernel that drops elsewhere fails the test instead of lying.

The knobs (forwarding, forward_accept, ...) say how the scenario departs from the healthy topology;
each broken scenario changes exactly one of them.
"""
from __future__ import annotations

import dataclasses

from dnattrace.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    description: str
    cause: str                      # the cause id diagnose must name ("none" when healthy)
    drop_function: str | None       # kfree_skb location symbol (without +offset)
    drop_reason: str | None         # skb_drop_reason name (without the SKB_DROP_REASON_ prefix)
    drop_ns: str | None             # "host" or "container": where the packet is freed
    docker: bool = False            # has a --docker variant (real Docker engine)
    expect_ok: bool = False         # the client's request succeeds
    # How the host departs from the healthy Docker layout (one knob per broken scenario).
    forwarding: bool = True         # net.ipv4.ip_forward in the host namespace
    forward_accept: bool = True     # Docker's DOCKER-chain ACCEPT rule for the published container port
    server: bool = True             # a server listens on the container port
    rp_filter: bool = False         # strict rp_filter on the outside interface + asymmetric route back
    conntrack_full: bool = False    # the host namespace's conntrack table is full
    input_drop: bool = False        # target is a host process on :9090 behind a filter INPUT DROP rule
    dnat_target: str | None = None  # DNAT to this address instead of the container's (a missing host)
    drop_delay: float = 0.0         # seconds between the first packet and its drop (neighbour timeouts)
    # other functions some kernels free the packet in for the same drop (Debian's 6.1 and 5.10 free a
    # packet an nftables DROP verdict refused in nf_hook_slow, 6.18 in nft_do_chain)
    drop_function_alt: tuple[str, ...] = ()

    def drop_site_matches(self, location: str) -> bool:
        """Is `location` ("function+0xoff") this scenario's drop function? Compared without the compiler's
        suffixes: 6.1 drops in ip_rcv_finish_core.constprop.0+0x1ab."""
        from dnattrace.kernel.kallsyms import base_name
        return bool(self.drop_function) and base_name(location.split("+")[0]) in (self.drop_function,
                                                                                  *self.drop_function_alt)

    def to_dict(self):
        return {k: getattr(self, k) for k in ("id", "description", "cause", "drop_function", "drop_reason",
                                              "drop_ns", "docker", "expect_ok")}


SCENARIOS = [
    Scenario("healthy", "Docker-style host, published port 8080 -> container :80; the request succeeds.",
             cause="none", drop_function=None, drop_reason=None, drop_ns=None, docker=True, expect_ok=True),
    Scenario("forwarding-off", "IPv4 forwarding is off on the host: the DNATed SYN cannot be forwarded.",
             cause="forwarding-off", drop_function="ip_error", drop_reason="IP_INADDRERRORS", drop_ns="host",
             docker=True, forwarding=False),
    Scenario("forward-policy-drop", "filter FORWARD policy DROP and Docker's ACCEPT rule for the container "
             "is missing (--docker: a DOCKER-USER rule drops the container's traffic).", cause="filter-forward-drop", drop_function="nft_do_chain",
             drop_reason="NETFILTER_DROP", drop_ns="host", forward_accept=False, docker=True,
             drop_function_alt=("nf_hook_slow",)),
    Scenario("no-listener", "The DNAT is right but nothing listens on the container port (RST).",
             cause="no-listener", drop_function="tcp_v4_rcv", drop_reason="NO_SOCKET", drop_ns="container",
             server=False),
    Scenario("rp-filter", "Strict rp_filter on the host's outside interface; the route back to the client "
             "leaves by another interface.", cause="rp-filter", drop_function="ip_rcv_finish_core",
             drop_reason="IP_RPFILTER", drop_ns="host", rp_filter=True),
    Scenario("conntrack-full", "The host's conntrack table is full: new connections cannot be tracked.",
             cause="conntrack-full", drop_function="nf_hook_slow", drop_reason="NETFILTER_DROP",
             drop_ns="host", conntrack_full=True),
    Scenario("input-drop", "A port published by a host process (:9090, no DNAT) is blocked by a filter "
             "INPUT DROP rule.", cause="filter-input-drop", drop_function="nft_do_chain",
             drop_reason="NETFILTER_DROP", drop_ns="host", input_drop=True, drop_function_alt=("nf_hook_slow",)),
    Scenario("neigh-failed", "The DNAT points at an address nobody has on the bridge (a stale container "
             "IP): ARP fails.", cause="neigh-failed", drop_function="neigh_invalidate",
             drop_reason="NEIGH_FAILED", drop_ns="host", dnat_target="172.31.0.9", drop_delay=3.5),
]

BY_ID = {s.id: s for s in SCENARIOS}


def get(scenario_id):
    """The scenario named `scenario_id`; a UsageError naming the known ones otherwise."""
    try:
        return BY_ID[scenario_id]
    except KeyError:
        raise UsageError("unknown lab scenario %r; known: %s" % (scenario_id, ", ".join(BY_ID))) from None
