"""doctor's answers must agree with independent trials made with other tools (bpftrace, bpftool, plain
file reads), and the attach plan must follow DESIGN.md's order of preference whatever the kernel allows."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from dnattrace import model
from dnattrace.kernel import capabilities, plan, preflight, tracefs
from dnattrace.watch import tracer
from dnattrace.kernel.capabilities import Capabilities, Capability
from dnattrace.errors import CannotObserve


# ---------------------------------------------------------------- plan: pure logic

def caps_with(*yes):
    return Capabilities([Capability(n, n in yes, "" if n in yes else "refused") for n in capabilities.NAMES])


ALL = capabilities.NAMES


def by_point(choices):
    return {c.point: c for c in choices}


def every(*_):
    return True


def test_plan_prefers_function_exit_probes_when_the_kernel_has_them():
    p = by_point(plan.choose(caps_with(*ALL), has_function=every, has_event=every))
    assert p["route decision"].probe.label == "tp_btf/fib_table_lookup"
    assert p["route result"].probe.label == "fexit/ip_route_input_noref"
    assert p["hook verdict"].programs == ("verdict_fentry", "verdict_fexit")
    assert p["netfilter hooks"].probe.needs == "netfilter_link"
    assert p["drop"].probe.label == "tp_btf/kfree_skb (headers by direct loads)"
    assert p["device receive"].programs == ("rx_direct",)


def test_plan_on_a_kernel_like_the_development_one():
    """No fentry, no kprobes: no route result and no hook verdict, the fib lookup and netfilter links."""
    caps = caps_with("btf", "tracefs", "kallsyms", "tp_btf", "raw_tp", "tracepoint", "netfilter_link",
                     "fib_tracepoint", "ringbuf", "drop_reason_enum")
    p = by_point(plan.choose(caps, has_function=every, has_event=every))
    assert p["route decision"].probe.label == "tp_btf/fib_table_lookup"
    assert p["route result"].probe is None
    assert [t for t, _ in p["route result"].tried] == ["fexit/ip_route_input_noref", "kretprobe/ip_route_input_noref"]
    assert p["device receive"].probe.label == "tp_btf/netif_receive_skb"
    assert p["device receive"].tried == [("tp_btf/netif_receive_skb (headers by direct loads)", "no direct_read")]
    assert plan.rule_verdict().probe.needs == "counters"


def test_plan_without_netfilter_links_uses_kprobes_on_nf_hook_slow():
    """Before 6.4: every hook's passage from nf_hook_slow's entry and return; its verdicts come with it."""
    p = by_point(plan.choose(caps_with("btf", "raw_tp", "tracepoint", "kprobe"), has_function=every, has_event=every))
    assert p["netfilter hooks"].programs == ("hook_kprobe", "hook_kretprobe")
    assert [t for t, _ in p["netfilter hooks"].tried] == [plan._netfilter_label(),
                                                          "fentry+fexit/nf_hook_slow (entry = first, return = last or the verdict)"]
    assert p["hook verdict"].programs == () and "kprobe+kretprobe/nf_hook_slow" in p["hook verdict"].probe.label
    assert p["route result"].programs == ("route_kprobe", "route_kretprobe")
    assert p["drop"].probe.label == "skb:kfree_skb"       # watch has no raw_tp drop program
    assert p["route decision"].probe.label == "raw_tp/fib_table_lookup"


def test_plan_without_netfilter_links_prefers_fentry_fexit_on_nf_hook_slow():
    p = by_point(plan.choose(caps_with("btf", "tp_btf", "fexit", "kprobe", "fib_tracepoint"), has_function=every,
                             has_event=every))
    assert p["netfilter hooks"].programs == ("hook_fentry", "hook_fexit")
    assert p["hook verdict"].programs == ()
    assert p["route result"].programs == ("route_fentry", "route_fexit")


def test_plan_skips_inlined_functions_and_missing_tracepoints():
    caps = caps_with("btf", "tracepoint", "tp_btf", "fexit")
    p = by_point(plan.choose(caps, has_function=lambda f: f != "ip_route_input_noref",
                             has_event=lambda c, n: n != "net_dev_xmit"))
    assert p["route result"].probe is None
    assert ("fexit/ip_route_input_noref", "not in kallsyms: ip_route_input_noref") in p["route result"].tried
    assert p["transmit"].probe is None and p["transmit"].tried == [("tp_btf/net_dev_xmit", "no tracepoint net:net_dev_xmit")]
    assert p["drop"].probe.label == "tp_btf/kfree_skb"


def test_plan_says_why_a_point_is_unavailable():
    choices = plan.choose(caps_with("btf"), has_function=lambda f: None, has_event=lambda c, n: None)
    p = by_point(choices)
    assert p["drop"].probe is None and p["drop"].tried[0] == ("tp_btf/kfree_skb (headers by direct loads)", "no direct_read")
    assert json.loads(json.dumps(p["drop"].to_dict()))["tried"][1] == {"probe": "tp_btf/kfree_skb", "why": "no tp_btf"}
    with pytest.raises(CannotObserve, match="cannot trace the device receive point"):
        plan.require(choices)


@pytest.mark.parametrize("have", [ALL, [n for n in ALL if n not in ("direct_read", "netfilter_link")],
                                  ["btf", "tracepoint", "kprobe"], ["btf", "tp_btf", "fexit", "raw_tp"]])
def test_doctor_shows_exactly_what_watch_loads(have, monkeypatch):
    """One table: the programs watch loads for every point are the ones doctor's choice names."""
    caps = caps_with(*have)
    monkeypatch.setattr(plan, "_kernel_has_function", lambda f: True)
    monkeypatch.setattr(plan, "_has_event", lambda c, n: True)
    chosen, _ = tracer.choose(caps)
    shown = {c.point: c for c in plan.choose(caps)}
    for point, programs in chosen.items():
        if point == "netfilter hooks" and plan.hooks_by_links(list(shown.values())):
            assert set(programs) == {p for _, p, _ in plan.positions(True, caps.has("direct_read"))} | \
                set(plan.CHAIN_PROGRAMS)
        else:
            assert tuple(programs) == shown[point].programs
    # a point covered by another's programs (the verdict, by nf_hook_slow's probes) loads nothing of its own
    assert set(chosen) == {p for p, c in shown.items() if c.probe and c.programs}


def test_netfilter_positions_are_one_table():
    edges = plan.positions(hook_detail=False)
    assert {(h, prio) for h, _, prio in edges} == {(h, prio) for h in plan.HOOKS
                                                    for prio in (-(2 ** 31) + 1, 2 ** 31 - 2)}
    detail = plan.positions(hook_detail=True)
    assert ("PREROUTING", "nf_dnat", -99) in detail and ("POSTROUTING", "nf_snat", 101) in detail
    assert ("FORWARD", "nf_dnat", -99) not in detail
    assert {p.stage for p in plan.POSITIONS} | {"filter", "chain"} == set(model.STAGES)


def test_watch_reads_headers_directly_where_the_kernel_allows_it(monkeypatch):
    monkeypatch.setattr(plan, "_kernel_has_function", lambda f: True)
    monkeypatch.setattr(plan, "_has_event", lambda c, n: True)
    chosen, _ = tracer.choose(caps_with(*ALL))
    assert chosen["device receive"] == ["rx_direct"] and chosen["drop"] == ["drop_direct"]
    assert "nf_first_direct" in chosen["netfilter hooks"] and "nf_first" not in chosen["netfilter hooks"]
    chosen, _ = tracer.choose(caps_with(*(n for n in ALL if n != "direct_read")))
    assert chosen["device receive"] == ["rx_btf"] and chosen["drop"] == ["drop_btf"]
    assert "nf_first" in chosen["netfilter hooks"] and "nf_first_direct" not in chosen["netfilter hooks"]


def test_avoided_capabilities_are_not_tried(monkeypatch):
    monkeypatch.setenv(capabilities.AVOID_ENV, "direct_read, kprobe")
    assert capabilities.avoided() == {"direct_read", "kprobe"}
    monkeypatch.setenv(capabilities.AVOID_ENV, "direct_read,kprobes")
    with pytest.raises(CannotObserve, match="unknown capabilities: kprobes"):
        capabilities.avoided()


def test_trials_loaded_together_answer_as_trials_loaded_alone(root, monkeypatch):
    """The grouped trials share one object (one BTF parse); the answers are those of each trial alone, and
    a group the kernel refuses (here with fentry in it, which this kernel refuses; elsewhere it loads)
    falls back to them."""
    def answers():
        return [(c.name, c.ok, c.detail) for c in capabilities.probe(refresh=True)]
    grouped = answers()
    monkeypatch.setattr(capabilities, "GROUPED", {})
    alone = answers()
    monkeypatch.setattr(capabilities, "GROUPED", {"fentry": "probe_fentry", "tp_btf": "probe_tp_btf",
                                                  "raw_tp": "probe_raw_tp"})
    refused = answers()
    assert grouped == alone == refused


def test_minimum():
    assert caps_with("btf", "raw_tp").missing_minimum() == []
    assert caps_with("raw_tp").missing_minimum() == ["BTF"]
    assert len(caps_with("btf", "fentry", "kprobe").missing_minimum()) == 1


# ---------------------------------------------------------------- agreement with independent trials

def bpftrace_attaches(probe):
    """bpftrace attaches every probe before BEGIN runs, so exit() in BEGIN succeeds only if they all did."""
    if not shutil.which("bpftrace"):
        pytest.fail("bpftrace is needed for this test (scripts/bootstrap installs it)")
    p = subprocess.run(["bpftrace", "-e", "%s {} BEGIN { exit(); }" % probe], capture_output=True, text=True,
                       timeout=60)
    return p.returncode == 0


def test_tracepoint_agrees_with_bpftrace(caps):
    assert caps.has("tracepoint") == bpftrace_attaches("tracepoint:skb:kfree_skb")


def test_kprobe_agrees_with_bpftrace_and_kprobe_events(caps):
    assert caps.has("kprobe") == bpftrace_attaches("kprobe:ip_rcv")
    if not os.path.exists(os.path.join(tracefs.path(), "kprobe_events")):
        assert not caps.has("kprobe") and "kprobe_events is absent" in caps["kprobe"].detail


def test_fentry_agrees_with_bpftrace(caps):
    assert caps.has("fentry") == bpftrace_attaches("kfunc:ip_rcv")
    if not caps.has("fentry"):
        assert caps["fentry"].detail.startswith(("load refused", "attach refused"))


def test_btf_ringbuf_and_drop_reasons_agree_with_bpftool(caps):
    dump = subprocess.run(["bpftool", "btf", "dump", "file", preflight.BTF_PATH, "format", "raw"],
                          capture_output=True, text=True)
    assert caps.has("btf") == (dump.returncode == 0)
    features = json.loads(subprocess.run(["bpftool", "feature", "probe", "kernel", "-j"], capture_output=True,
                                         text=True, check=True).stdout)
    assert caps.has("ringbuf") == features["map_types"]["have_ringbuf_map_type"]
    enum = caps["drop_reason_enum"]
    if "BTF" in enum.detail:
        m = re.search(r"ENUM 'skb_drop_reason' .* vlen=(\d+)", dump.stdout)
        assert m and enum.value == int(m.group(1))
    else:
        assert enum.value == len(re.findall(r'\{ \d+, "', open(tracefs.event_dir("skb", "kfree_skb") + "/format").read()))


def test_kallsyms_agrees_with_a_plain_read(caps):
    first = open("/proc/kallsyms").readline().split()[0]
    assert caps.has("kallsyms") == (int(first, 16) != 0)


def test_doctor_cli_json_agrees_and_exits_0_with_the_minimum(caps):
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "doctor", "--json"], capture_output=True,
                       text=True, timeout=60)
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    got = {l["name"]: l["ok"] for l in lines if l["type"] == "capability"}
    assert got == {c.name: c.ok for c in caps}
    shown = {l["point"]: l["programs"] for l in lines if l["type"] == "plan"}
    chosen, _ = tracer.choose(caps)      # what watch loads on this kernel
    assert list(shown) == [p.name for p in plan.POINTS] + ["rule verdict"]
    for point, programs in chosen.items():
        if point != "netfilter hooks":
            assert shown[point] == programs, point
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["minimum_ok"] == (caps.missing_minimum() == [])
    assert p.returncode == (0 if summary["minimum_ok"] else 3), p.stderr


def test_doctor_cli_table(caps):
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "doctor"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == (0 if caps.missing_minimum() == [] else 3), p.stderr
    for c in caps:
        assert re.search(r"^%s\s+%s\s" % (c.name, "yes" if c.ok else "no"), p.stdout, re.M), c.name
    assert "journey point" in p.stdout and "drop" in p.stdout


def test_this_boots_answers_are_kept_and_reused_only_for_the_same_question(root, tmp_path):
    """watch and diagnose start without the BPF trials once doctor (or any run) made them this boot;
    another avoided set, another kernel or another trial object is another question."""
    env = dict(os.environ, DNATTRACE_RUN_DIR=str(tmp_path))
    code = ("import json; from dnattrace.kernel import capabilities as c; caps = c.probe(); "
            "print(json.dumps([caps.cached, {x.name: x.ok for x in caps}]))")

    def run(**extra):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(env, **extra))
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    first, second = run(), run()
    assert first[0] is False and second[0] is True and first[1] == second[1]
    avoided = run(**{capabilities.AVOID_ENV: "direct_read"})
    assert avoided[0] is False and avoided[1]["direct_read"] is False
    assert os.path.exists(tmp_path / "capabilities.json")
