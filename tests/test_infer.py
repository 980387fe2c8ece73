"""Kernels without drop reasons (before 5.17): the reason is inferred from the drop site and what the
journey showed before it; journeys keep a hook's late verdict; unobservable points are said."""
import errno

from dnattrace import model
from dnattrace.kernel.kallsyms import base_name
from dnattrace.lab import scenarios
from dnattrace.output import journey_lines
from dnattrace.watch import infer, journeys

T = model.Tuple5(6, "198.51.100.2", 40000, "172.31.0.2", 80)


def j(*steps):
    return model.Journey(skb=1, steps=list(steps))


def step(point, ts=0, **kw):
    return model.Step(ts_ns=ts, point=point, netns=7, tuple=T, **kw)


def test_reason_by_site():
    for site, reason in [("nft_do_chain+0x4f2", "NETFILTER_DROP"), ("nf_hook_slow+0x93", "NETFILTER_DROP"),
                         ("tcp_v4_rcv+0x5c", "NO_SOCKET"), ("neigh_invalidate+0x8d", "NEIGH_FAILED")]:
        journey = j(step(model.DROP, location=site))
        infer.infer_drop_reasons(journey)
        assert (journey.last.reason, journey.last.reason_inferred) == (reason, True), site


def test_ip_error_by_the_route_lookup():
    unreachable = model.RouteInfo(254, err=-errno.ENETUNREACH, dst=T.dst)
    no_route = j(step(model.ROUTE, route=unreachable), step(model.DROP, location="ip_error+0x68"))
    forwarding_off = j(step(model.ROUTE, route=model.RouteInfo(254, oif="br0", dst=T.dst)),
                       step(model.DROP, location="ip_error+0x68"))
    # what the fib tracepoint reports for a table without a match (5.10's bridge-down lab)
    table_miss = j(step(model.ROUTE, route=model.RouteInfo(254, err=-errno.EAGAIN, dst=T.dst)),
                   step(model.DROP, location="ip_error+0x68"))
    for journey in (no_route, forwarding_off, table_miss):
        infer.infer_drop_reasons(journey)
    assert no_route.last.reason == table_miss.last.reason == "IP_INNOROUTES"
    assert forwarding_off.last.reason == "IP_INADDRERRORS"


def test_rp_filter_by_the_route_result_and_unknown_sites_stay_unknown():
    rp = j(step(model.RTRESULT, reason="EXDEV"), step(model.DROP, location="ip_rcv_finish_core.constprop.0+0x1ab"))
    other = j(step(model.DROP, location="some_function+0x10"))
    infer.infer_drop_reasons(rp)
    infer.infer_drop_reasons(other)
    assert rp.last.reason == "IP_RPFILTER"
    assert other.last.reason == "" and not other.last.reason_inferred
    assert "reason unknown (this kernel reports none)" in journey_lines.step_lines(other)[-1]


def test_inferred_reason_is_printed_as_such_and_survives_json():
    journey = j(step(model.RX, ifname="eth0"), step(model.DROP, location="tcp_v4_rcv+0x5c"))
    infer.infer_drop_reasons(journey)
    assert journey_lines.step_lines(journey)[-1].endswith("reason NO_SOCKET (inferred)")
    back = model.journey_from_dict(model.to_dict(journey))
    assert back.last.reason_inferred is True


def test_a_point_the_kernel_cannot_show_is_said():
    journey = j(step(model.RX, ifname="eth0"), step(model.DROP, location="ip_error+0x68", reason="IP_INADDRERRORS"))
    journey.unobservable = ["netfilter hooks"]
    lines = journey_lines.step_lines(journey)
    assert lines[1].startswith("hooks") and lines[1].endswith("not observable on this kernel")
    assert model.journey_from_dict(model.to_dict(journey)).unobservable == ["netfilter hooks"]


def test_a_verdict_reported_after_the_drop_inside_its_hook_joins_the_journey():
    """fexit on nf_hook_slow returns after kfree_skb reported the drop: the verdict (stamped with the
    hook's entry time) must land in the dropped packet's journey, before the drop."""
    b = journeys.JourneyBuilder(lambda t: True)
    b.add(step(model.RX, ts=1, ifname="eth0"), skb=5, new=True)
    b.add(step(model.NF, ts=2, hook="FORWARD", stage="first"), skb=5)
    done = b.add(step(model.DROP, ts=4, location="nft_do_chain+0x1", reason="NETFILTER_DROP"), skb=5)
    assert len(done) == 1
    late = model.Step(ts_ns=3, point=model.VERDICT, netns=7, hook="FORWARD", reason="NF_DROP")
    assert b.add(late, skb=5) == [] and not b.open
    journey = done[0][0]
    assert [s.point for s in journey.steps] == [model.RX, model.NF, model.VERDICT, model.DROP]
    assert journey_lines.drop_hook(journey) == "FORWARD"


def test_compiler_suffixes():
    assert base_name("ip_rcv_finish_core.constprop.0") == "ip_rcv_finish_core"
    assert base_name("foo.isra.0.cold") == "foo" and base_name("ip_error") == "ip_error"
    assert scenarios.get("rp-filter").drop_site_matches("ip_rcv_finish_core.constprop.0+0x1ab")
    assert not scenarios.get("rp-filter").drop_site_matches("ip_rcv_core+0x1")


def test_ipv6_sites():
    """tcp_v6_rcv as tcp_v4_rcv; ip6_forward's refusal of a SYN is forwarding off (a SYN is never too big),
    of a data packet it is not said."""
    t6 = model.Tuple5(6, "2001:db8:1::2", 40000, "2001:db8:2::2", 80)
    syn = j(model.Step(ts_ns=0, point=model.DROP, netns=7, tuple=t6, tcp_flags="S", location="ip6_forward+0x689"))
    data = j(model.Step(ts_ns=0, point=model.DROP, netns=7, tuple=t6, tcp_flags="AP", location="ip6_forward+0x1"))
    rst = j(model.Step(ts_ns=0, point=model.DROP, netns=7, tuple=t6, tcp_flags="S", location="tcp_v6_rcv+0x35a"))
    for journey in (syn, data, rst):
        infer.infer_drop_reasons(journey)
    assert (syn.last.reason, syn.last.reason_inferred) == ("IP_INADDRERRORS", True)
    assert rst.last.reason == "NO_SOCKET" and not data.last.reason
