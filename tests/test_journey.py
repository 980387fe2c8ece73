"""Journey building on recorded kernel data: grouping per skb, retransmissions, replies across NAT."""
from dnattrace.watch import journeys
from dnattrace import model
from dnattrace.output import journey_lines

import recorded
from recorded import SERVICES, connections, rows


def test_forwarding_off_retransmissions_are_one_attempt_dropped_at_ip_error():
    conns = [c for c in connections("forwarding-off") if c.requests]
    assert len(conns) == 1
    c = conns[0]
    assert c.attempts >= 2, "a 2.5 s connect sends the SYN and at least one retransmission"
    assert c.outcome == "dropped" and not c.replies
    for j in c.openers:
        assert j.outcome == "dropped"
        assert j.drop.location.startswith("ip_error+")
        assert j.drop.reason == "IP_INADDRERRORS"
        # the drop comes right after the route decision towards the bridge
        kinds = [s.point for s in j.steps]
        assert kinds.index(model.ROUTE) == len(kinds) - 2
        assert j.routes()[0].route.oif.endswith("br")
        assert j.hooks_seen() == ["PREROUTING"]


def test_dnat_rewrite_is_visible_in_prerouting():
    c = next(c for c in connections("forwarding-off") if c.requests)
    j = c.openers[0]
    assert j.tuples()[0].dport == 8080 and j.tuples()[-1] == model.Tuple5(6, "198.51.100.2", c.key.sport, "172.31.0.2", 80)
    line = next(l for l in journey_lines.step_lines(j) if l.startswith("PREROUTING"))
    assert "DNAT 198.51.100.1:8080 -> 172.31.0.2:80" in line and "conntrack NEW" in line


def test_healthy_syn_delivered_in_container_and_syn_ack_unnated():
    c = next(c for c in connections("healthy") if c.openers)
    syn = c.openers[0]
    assert syn.outcome == "delivered"
    assert syn.end_step.netns != syn.first.netns, "delivered in the container's namespace, not the host's"
    assert syn.hooks_seen(syn.first.netns) == ["PREROUTING", "FORWARD", "POSTROUTING"]
    route = syn.routes()[0].route
    assert route.local is False, "the host must forward the DNATed SYN"
    synack = next(r for r in c.replies if r.first.tcp_flags == "SA")
    post = [s for s in synack.steps if s.point == model.NF and s.hook == "POSTROUTING" and s.netns == syn.first.netns]
    assert post[0].tuple.src == "172.31.0.2" and post[-1].tuple.src == "198.51.100.1", "un-NATed on its way out"
    assert c.outcome == "answered"


def test_no_listener_rst_is_the_reply():
    c = next(c for c in connections("no-listener") if c.openers)
    assert c.outcome == "refused"
    assert c.openers[0].drop.reason == "NO_SOCKET"
    assert any("R" in r.first.tcp_flags for r in c.replies)


def test_forward_policy_drop_names_the_hook():
    c = next(c for c in connections("forward-policy-drop") if c.openers)
    j = c.openers[0]
    assert j.drop.reason == "NETFILTER_DROP"
    assert journey_lines.drop_hook(j) == "FORWARD"
    assert "in FORWARD" in journey_lines.journey_end(j)


def test_recycled_skb_starts_a_new_journey():
    """The kernel flags a new packet in an skb address already followed: it must not extend the old journey."""
    def step(ts, point, flags, **kw):
        return model.Step(ts_ns=ts, point=point, tcp_flags=flags,
                          tuple=model.Tuple5(6, "198.51.100.2", 5000, "198.51.100.1", 8080), **kw)
    b = journeys.JourneyBuilder(journeys.request_matcher([(6, 8080, None)]))
    b.add(step(1, model.RX, "S"), 0xabc, new=True)
    b.add(step(2, model.RX, "R"), 0xabc, new=True)
    b.flush()
    (c,) = b.connections
    assert [len(j.steps) for j in c.requests] == [1, 1]
    assert c.attempts == 1, "the RST is not a transmission of the attempt"


def test_idle_journeys_expire():
    b = journeys.JourneyBuilder(journeys.request_matcher([(6, 8080, None)]), idle_s=1.0)
    b.add(model.Step(ts_ns=10, point=model.RX, tcp_flags="S",
                     tuple=model.Tuple5(6, "198.51.100.2", 1, "198.51.100.1", 8080)), 1)
    assert b.expire(10 + 500_000_000) == []
    (done,) = b.expire(10 + 1_500_000_000)
    assert done[0].outcome == "unfinished"


def test_json_round_trip_of_recorded_connections():
    for scenario in ("healthy", "forwarding-off", "no-listener", "forward-policy-drop"):
        for c in connections(scenario):
            again = model.connection_from_dict(model.to_dict(c))
            assert model.to_dict(again) == model.to_dict(c)
            assert again.outcome == c.outcome


def test_recorded_rows_have_kernel_names():
    assert any(r["step"].get("reason") == "IP_INADDRERRORS" for r in rows("forwarding-off"))


def test_a_late_drop_completes_the_expired_journey():
    """A SYN parked waiting for ARP is dropped (NEIGH_FAILED) seconds later: same journey, now ended."""
    t = model.Tuple5(6, "198.51.100.2", 7, "198.51.100.1", 8080)
    b = journeys.JourneyBuilder(journeys.request_matcher([(6, 8080, None)]), idle_s=1.0)
    b.add(model.Step(ts_ns=0, point=model.RX, tcp_flags="S", tuple=t), 5, new=True)
    (first,) = b.expire(2_000_000_000)
    assert first[0].outcome == "unfinished"
    (done,) = b.add(model.Step(ts_ns=3_000_000_000, point=model.DROP, tcp_flags="S", tuple=t,
                               location="neigh_invalidate+0x8a", reason="NEIGH_FAILED"), 5)
    assert done[0] is first[0] and done[0].outcome == "dropped"
    (c,) = b.connections
    assert c.attempts == 1 and c.outcome == "dropped"


def test_fast_step_serialisation_says_what_the_generic_one_says():
    import dataclasses
    extra = [model.Step(ts_ns=1, point=model.VERDICT, hook="FORWARD", reason="NF_DROP"),
             model.Step(ts_ns=2, point=model.ROUTE, route=model.RouteInfo(table=254, oif="br0", local=False))]
    steps = [s for c in connections("healthy") for j in c.requests + c.replies for s in j.steps] + extra
    for s in steps:
        generic = {f.name: model.to_dict(getattr(s, f.name)) for f in dataclasses.fields(s)
                   if getattr(s, f.name) not in (None, "", [])}
        assert model.to_dict(s) == generic


def test_hook_verdict_names_the_hook_where_there_are_no_netfilter_links():
    """Kernels before 6.4: no netfilter links, but fexit on nf_hook_slow reports the dropping hook."""
    t = model.Tuple5(6, "198.51.100.2", 9, "198.51.100.1", 8080)
    j = model.Journey(skb=1, steps=[
        model.Step(ts_ns=1, point=model.RX, tuple=t, tcp_flags="S"),
        model.Step(ts_ns=2, point=model.DROP, tuple=t, location="nft_do_chain+0x1", reason="NETFILTER_DROP"),
        model.Step(ts_ns=3, point=model.VERDICT, hook="FORWARD", reason="NF_DROP")])
    assert journey_lines.drop_hook(j) == "FORWARD"


def test_summary_lists_the_drops_of_packets_not_followed():
    """Under --max-rate most connections are only counted: their packets' drops still show, by site."""
    conns = [c for c in connections("forwarding-off") if c.requests]
    site = {"count": 7, "location": "ip_error+0x59", "function": "ip_error", "reason": "IP_INADDRERRORS",
            "netns": "lab-host", "proto": "tcp", "port": 80, "meaning": "not shown", "address": "0xffff"}
    text = journey_lines.summary_table(conns, 0, 12, 0, [site])
    assert "12 connections were not followed" in text
    assert "\n  7 at ip_error+0x59 (IP_INADDRERRORS) in lab-host" in text
    d = journey_lines.summary_json(conns, 0, 12, 0, [site])
    assert d["unfollowed_drops"] == [{k: site[k] for k in journey_lines.UNFOLLOWED_DROP_FIELDS}]
    assert journey_lines.summary_json(conns, 0)["unfollowed_drops"] == []
    assert "dropped while not followed" not in journey_lines.summary_table(conns, 0)


def _replay(runs):
    """Connections from several replays of recorded rows: each run is (rows, SYN sequence number, skb
    offset, time offset), as a client that reuses its port would produce them. Between runs the open
    journeys go idle (a port is reused a second after its TIME_WAIT at the earliest)."""
    b = journeys.JourneyBuilder(journeys.request_matcher(SERVICES))
    for rs, seq, skb_off, dt in runs:
        for r in rs:
            d = dict(r["step"], ts_ns=r["step"]["ts_ns"] + dt)
            if d.get("tcp_flags") == "S":
                d["seq"] = seq
            b.add(model.step_from_dict(d), r["skb"] + skb_off, r["new"])
        b.expire(max(r["step"]["ts_ns"] for r in rs) + dt + 5 * 10 ** 9)
    b.flush()
    return [c for c in b.connections if c.openers]


def test_a_new_connection_on_a_reused_client_port_is_not_a_retransmission():
    healthy = rows("healthy")
    conns = _replay([(healthy, 1000, 0, 0), (healthy, 2000, 1 << 20, 10 ** 9)])
    assert [(c.attempts, c.outcome, len(c.replies)) for c in conns] == [(1, "answered", 1), (1, "answered", 1)]
    assert conns[0].key == conns[1].key


def test_retransmissions_keep_their_sequence_number_and_stay_one_attempt():
    off = rows("forwarding-off")
    n = len(connections("forwarding-off")[0].openers)
    conns = _replay([(off, 1000, 0, 0), (off, 1000, 1 << 20, 10 ** 9)])
    assert [c.attempts for c in conns] == [2 * n]


def test_live_lines_for_drops_of_packets_not_followed():
    site = {"count": 2, "location": "ip_error+0x94", "function": "ip_error", "reason": "IP_INADDRERRORS",
            "netns": "host", "proto": "tcp", "port": 80}
    assert journey_lines.unfollowed_drops_text([site], 2.5) == \
        "not followed: 2 packets dropped at ip_error+0x94 (IP_INADDRERRORS) in host  at +2.50s"
    d = journey_lines.unfollowed_drops_json([site, dict(site, count=1, netns="ctr")])
    assert d["type"] == "unfollowed_drops" and [x["count"] for x in d["drops"]] == [2, 1]


def _many_connections(n, apart_ns=2_000_000):
    """The recorded healthy connection n times, each from its own client port, apart_ns apart: (skb,
    step, new) triples in arrival order."""
    import dataclasses
    base = [(r["skb"], model.step_from_dict(r["step"]), r["new"]) for r in recorded.rows("healthy")]
    client_port = next(s.tuple.sport for _, s, _ in base if s.tuple)

    def remap(t, p):
        return t and model.Tuple5(t.proto, t.src, p if t.sport == client_port else t.sport, t.dst,
                                  p if t.dport == client_port else t.dport)
    for i in range(n):
        p = 1024 + i
        for skb, s, new in base:
            s2 = dataclasses.replace(s, ts_ns=s.ts_ns + i * apart_ns, tuple=remap(s.tuple, p),
                                     seq=s.seq + i if s.seq else s.seq)
            if s2.ct:
                s2.ct = dataclasses.replace(s2.ct, orig=remap(s2.ct.orig, p), reply=remap(s2.ct.reply, p))
            yield skb + i * 4096, s2, new


def _bounded_run(n, live=200):
    """(builder, peak bytes allocated) after n connections through a bounded builder, driven like the
    watch session drives it (expire and retire every ~45 connections, journeys handed out)."""
    import tracemalloc
    b = journeys.JourneyBuilder(journeys.request_matcher(recorded.SERVICES), trim=True, max_live=live)
    tracemalloc.start()
    for i, (skb, s, new) in enumerate(_many_connections(n)):
        for j, _c in b.add(s, skb, new):
            b.handed_out(j)
        if i % 2000 == 0:
            for j, _c in b.expire(s.ts_ns):
                b.handed_out(j)
            b.retire(s.ts_ns, keep_rows=300)
            assert len(b.connections) <= live + 100
    b.flush()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return b, peak


def test_a_bounded_builder_stays_small_and_accounts_for_every_connection():
    """watch under sustained load: at most max_live connections kept whole, the rest retired to rows or
    outcome counts; a late reply of a retired connection updates its count instead of counting a new
    one: every connection accounted once, with its real outcome, and memory does not grow with n (the
    open journeys of the last idle_s, about 500 connections here, are the floor)."""
    b, peak = _bounded_run(1500)
    b3, peak3 = _bounded_run(4500)
    for n, x in ((1500, b), (4500, b3)):
        assert len(x.all_connections()) + sum(x.untold_outcomes.values()) == n
        assert x.retired_early > 0 and set(x.untold_outcomes) == {"answered"}, x.untold_outcomes
        assert all(c.outcome == "answered" for c in x.all_connections())
        assert all(len(j.steps) <= 3 for c in x.retired for j in c.requests + c.replies)
    assert peak3 < 1.3 * peak, "bounded: %.1f MB for 1500 connections, %.1f MB for 4500" % (peak / 1e6, peak3 / 1e6)


def test_a_failure_seen_while_events_were_lost_gets_no_verdict():
    c = recorded.connections("forwarding-off")[0]
    assert c.outcome == "dropped"
    c.openers[0].lost_events = 3
    assert c.outcome == "incomplete"


def test_every_udp_datagram_is_an_attempt():
    """For UDP there is no SYN: each datagram the client sends is a transmission of the attempt (the
    openers were empty, so a dropped datagram never made the connection 'dropped')."""
    t = model.Tuple5(17, "198.51.100.2", 40000, "198.51.100.1", 5353)
    drop = model.Step(ts_ns=2, point=model.DROP, netns=1, tuple=t, location="__udp4_lib_rcv+0x1", reason="NO_SOCKET")
    j = model.Journey(skb=1, steps=[model.Step(ts_ns=1, point=model.RX, netns=1, tuple=t), drop])
    c = model.Connection(key=t, requests=[j])
    assert c.openers == [j] and c.attempts == 1 and c.outcome == "dropped"


def _reply(ts_ns, flags, key, dropped=False):
    """A reply journey of `key` (the client's tuple) seen leaving the host at ts_ns, or dropped there."""
    t = key.reversed()
    end = model.Step(ts_ns + 2, model.DROP, location="tcp_v4_rcv+0x99", reason="NO_SOCKET") if dropped \
        else model.Step(ts_ns + 2, model.CONSUME, location="skb_release_data+0x1")
    return model.Journey(skb=ts_ns, direction="reply", steps=[
        model.Step(ts_ns, model.RX, tuple=t, tcp_flags=flags), model.Step(ts_ns + 1, model.XMIT, tuple=t, tcp_flags=flags), end])


def test_a_rst_after_the_answer_ends_the_connection_and_is_no_refusal():
    """A busy port's connections end in RSTs (an impatient client's SO_LINGER 0, a server closing a socket
    the client left): the attempt was answered by its SYN-ACK, and a RST coming back after it does not
    turn it into a refusal, nor does a RST the host sends for a late packet."""
    c = next(c for c in connections("healthy") if c.openers)
    assert c.outcome == "answered"
    later = max(j.last.ts_ns for j in c.requests + c.replies) + 1000
    c.replies.append(_reply(later, "R", c.key))
    assert c.outcome == "answered"
    c.replies.append(_reply(later + 1000, "R", c.key, dropped=True))
    assert c.outcome == "answered", "a dropped RST is no data reply: the handshake answer stands"


def test_a_rst_before_any_answer_is_a_refusal():
    c = next(c for c in connections("healthy") if c.openers)
    c.replies = [r for r in c.replies if r.first.tcp_flags != "SA"]
    first = min(j.first.ts_ns for j in c.requests)
    c.replies.append(_reply(first + 10, "RA", c.key))
    assert c.outcome == "refused"


def test_a_journey_without_addresses_starts_no_connection():
    """A journey whose addressed steps were lost (only a free seen) cannot be told to any attempt: it is
    counted apart, and no connection without a key (a row of nothing, a crash when printed) is made."""
    b = journeys.JourneyBuilder(journeys.request_matcher(SERVICES))
    assert b.add(model.Step(1, model.CONSUME, location="skb_release_data+0x1"), skb=7) == []
    assert b.connections == [] and b.keyless == 1


def test_a_new_syn_on_a_retired_connections_port_is_a_new_attempt():
    """A busy client comes back to a port within seconds: its SYN (a new sequence number) on the tuple of
    a connection a bounded watch has retired is a new attempt, accounted as one, not a late packet of
    the old connection (which lost every such connection from the summary)."""
    t = model.Tuple5(6, "198.51.100.2", 40000, "198.51.100.1", 8080)
    b = journeys.JourneyBuilder(journeys.request_matcher(SERVICES), trim=True, max_live=1)

    def syn(ts, seq):
        b.add(model.Step(ts, model.RX, netns=1, tuple=t, tcp_flags="S", seq=seq), skb=ts)
        b.add(model.Step(ts + 1, model.CONSUME, netns=1, location="tcp_v4_rcv+0x1"), skb=ts)

    syn(1000, 11)
    b.retire(now_ns=10 ** 12, keep_rows=0)
    assert b.connections == [] and sum(b.untold_outcomes.values()) == 1
    syn(2000, 22)
    assert len(b.connections) == 1 and b.connections[0].openers[0].first.seq == 22
    assert b.late_journeys == 0


def test_a_retired_connections_late_rst_before_its_late_syn_ack_is_still_answered():
    """Journeys finish out of order: the SYN-ACK (freed without a tracepoint, ended by idleness) after the
    RST that closed the connection. A connection counted without a row gets 'refused' only from a RST
    that came before any answer."""
    t = model.Tuple5(6, "198.51.100.2", 40000, "198.51.100.1", 8080)
    b = journeys.JourneyBuilder(journeys.request_matcher(SERVICES), trim=True, max_live=1)
    b.add(model.Step(1000, model.RX, netns=1, tuple=t, tcp_flags="S", seq=11), skb=1)
    b.add(model.Step(1001, model.CONSUME, netns=1, location="tcp_v4_rcv+0x1"), skb=1)
    b.retire(now_ns=10 ** 12, keep_rows=0)
    assert b.untold_outcomes == {"no-reply": 1}
    r = t.reversed()
    for skb, ts, flags in ((2, 3000, "R"), (3, 2000, "SA")):
        b.add(model.Step(ts, model.XMIT, netns=1, tuple=r, tcp_flags=flags), skb=skb)
        b.add(model.Step(ts + 1, model.CONSUME, netns=1, location="skb_release_data+0x1"), skb=skb)
    assert b.untold_outcomes == {"answered": 1}


def test_a_reply_that_left_before_a_reused_ports_new_syn_is_the_old_connections():
    """A busy client reuses a port while the old connection's closing RST is still on its way: that RST
    (it left before the new SYN arrived) belongs to the old connection, and does not make the new one
    'refused'."""
    t = model.Tuple5(6, "198.51.100.2", 40000, "198.51.100.1", 8080)
    b = journeys.JourneyBuilder(journeys.request_matcher(SERVICES))

    def journey(skb, ts, tup, flags, seq=None):
        b.add(model.Step(ts, model.XMIT, netns=1, tuple=tup, tcp_flags=flags, seq=seq), skb=skb)
        b.add(model.Step(ts + 1, model.CONSUME, netns=1, location="skb_release_data+0x1"), skb=skb)

    journey(1, 1000, t, "S", seq=11)
    journey(2, 1100, t.reversed(), "SA")
    b.add(model.Step(2900, model.XMIT, netns=1, tuple=t.reversed(), tcp_flags="R"), skb=3)    # the old close, open
    journey(4, 3000, t, "S", seq=22)
    b.add(model.Step(3001, model.CONSUME, netns=1, location="skb_release_data+0x1"), skb=3)   # ... finished late
    journey(5, 3100, t.reversed(), "SA")
    old, new = b.connections
    assert [r.first.tcp_flags for r in old.replies] == ["SA", "R"] and old.outcome == "answered"
    assert [r.first.tcp_flags for r in new.replies] == ["SA"] and new.outcome == "answered"
