"""Drop reasons for kernels that report none (kfree_skb gained its reason in 5.17): inferred from the
drop site and, where one site has several reasons, from what the journey showed before the drop (the
route lookup's error, the route result). An inferred reason is marked (Step.reason_inferred) and printed
as such; the cause catalogue matches on it like on a reported one.
"""
from __future__ import annotations

import errno
from typing import Optional

from dnattrace import model
from dnattrace.kernel.kallsyms import base_name
from dnattrace.kernel.reasons import BY_SITE

NO_ROUTE = (-errno.ENETUNREACH, -errno.EAGAIN)


def _route_error(j: model.Journey, before: model.Step) -> Optional[int]:
    """The forward route lookup's error (negative errno) before `before`, 0 when it succeeded, None when
    no lookup was seen."""
    err = None
    for s in j.steps:
        if s is before:
            break
        if s.point == model.ROUTE and s.route is not None and not s.route.reverse:
            err = s.route.err
    return err


def _route_result(j: model.Journey, before: model.Step) -> str:
    """The route result's errno name (RTRESULT step) before `before`, "" when none was seen or it succeeded."""
    out = ""
    for s in j.steps:
        if s is before:
            break
        if s.point == model.RTRESULT:
            out = s.reason
    return out


def reason_for(j: model.Journey, drop: model.Step) -> str:
    """The reason the kernel would have given for `drop`, or "" when the site does not tell."""
    func = base_name(drop.location.split("+")[0])
    if func == "ip_error":
        # ip_error frees by the unreachable route's error: no route counts as no route, EHOSTUNREACH (a
        # route, but forwarding is off, or an unreachable route) as an address error. The fib tracepoint
        # reports a table without a match as EAGAIN (fib_lookup turns the last one into ENETUNREACH).
        return "IP_INNOROUTES" if _route_error(j, drop) in NO_ROUTE else "IP_INADDRERRORS"
    if func == "ip6_forward":
        # before its FORWARD hook ip6_forward refuses a packet while IPv6 forwarding is off (an address
        # error), one whose hop limit ran out, or one too big for the next link: a SYN is never too big,
        # and a hop limit running out at the published host is rare next to forwarding being off
        return "IP_INADDRERRORS" if "S" in (drop.tcp_flags or "") and "A" not in (drop.tcp_flags or "") else ""
    if func == "ip_rcv_finish_core":
        # the route input failed: EXDEV is the reverse-path filter
        rr = _route_result(j, drop)
        return "IP_RPFILTER" if rr == "EXDEV" else ""
    return BY_SITE.get(func, "")


def infer_drop_reasons(j: model.Journey) -> None:
    """Fill the reason of drop steps that have none, marking it inferred."""
    for s in j.steps:
        if s.point == model.DROP and not s.reason and s.location:
            r = reason_for(j, s)
            if r:
                s.reason, s.reason_inferred = r, True
