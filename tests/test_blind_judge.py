"""The blind benchmark's judge (blind/run.py) on a recorded `diagnose --json` run (the lab's
forwarding-off host, 2026-12-06): which verdict a diagnosis earns, read from its top finding only."""
import copy
import json
import os

from blind import run

DATA = os.path.join(os.path.dirname(__file__), "data", "diagnose-forwarding-off.jsonl")
RECORDED = open(DATA).read()


def variant(change):
    """The recording with its diagnosis record changed by change(diag)."""
    lines = RECORDED.splitlines()
    diag = copy.deepcopy(json.loads(lines[-1]))
    change(diag)
    return "\n".join(lines[:-1] + [json.dumps(diag)])


def test_right_needs_every_substring_in_the_top_finding():
    assert run.judge(RECORDED, 1, ["net.ipv4.ip_forward", "IP_INADDRERRORS"]) == ("RIGHT", "forwarding-off")
    assert run.judge(RECORDED, 1, ["NET.IPV4.CONF.BLA1O.FORWARDING"]) == ("RIGHT", "forwarding-off")
    assert run.judge(RECORDED, 1, ["ip_forward=0|forwarding = 0", "bla1o"]) == ("RIGHT", "forwarding-off")
    assert run.judge(RECORDED, 1, ["rp_filter|mtu", "bla1o"])[0] == "WRONG"
    assert run.judge(RECORDED, 1, ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding=1"]) == \
        ("WRONG", "forwarding-off")


def test_ruled_out_and_later_findings_do_not_count():
    # "no-listener" is only in ruled_out; a second finding naming the object does not rescue the first
    assert run.judge(RECORDED, 1, ["tcp :::80 listens"])[0] == "WRONG"

    def second(d):
        d["findings"].append(dict(d["findings"][0], cause_id="rp-filter", explanation="rp_filter on bla1o",
                                  evidence=[], fix=[]))
    assert run.judge(variant(second), 1, ["rp_filter"])[0] == "WRONG"


def test_unexplained_is_neither_right_nor_wrong():
    def unexplained(d):
        d["top_cause"] = d["findings"][0]["cause_id"] = "unexplained"
    assert run.judge(variant(unexplained), 1, ["net.ipv4.ip_forward"]) == ("UNEXPLAINED", "unexplained")

    def nothing(d):
        d["findings"][0]["cause_id"] = "nothing-arrived"
    assert run.judge(variant(nothing), 1, ["x"]) == ("UNEXPLAINED", "nothing-arrived")


def test_no_fault_on_a_broken_host_is_wrong():
    def healthy(d):
        d.update(healthy=True, findings=[], top_cause=None)
    assert run.judge(variant(healthy), 0, ["net.ipv4.ip_forward"]) == ("WRONG", "no fault")
    assert run.judge(RECORDED, 0, ["net.ipv4.ip_forward"])[0] == "WRONG"


def test_no_diagnosis_record_is_an_error():
    assert run.judge(RECORDED.splitlines()[0] + "\nTraceback ...", 3, ["x"]) == ("ERROR", "exit 3")
    assert run.judge("", -9, ["x"]) == ("ERROR", "exit -9")


def test_right_if_names_the_instance_objects():
    ctx = {"host_netns": "p-host", "port": 8080, "n": {"out": "po"}, "pids": [1]}
    assert run.fill(["conf.{out}.forwarding", "{host_netns}:{port}"], ctx) == ["conf.po.forwarding", "p-host:8080"]


def test_measured_drops_against_truth():
    text = "Attaching 1 probe...\n\n@[ip_error, 87, 11]: 3\n@[tcp_v4_rcv+12, 3, 99]: 5\n@[kfree, 2, 11]: 1\n"
    drops = run.parse_bpftrace(text, {87: "IP_INADDRERRORS", 3: "NO_SOCKET", 2: "NOT_SPECIFIED"}, {11: "host"})
    assert drops == {("ip_error", "IP_INADDRERRORS", "host"): 3, ("kfree", "NOT_SPECIFIED", "host"): 1}
    assert run.drop_agrees("ip_error/IP_INADDRERRORS", drops)
    assert run.drop_agrees("ip6_forward/PKT_TOO_BIG or ip_error/IP_INADDRERRORS", drops)
    assert not run.drop_agrees("nft_do_chain/NETFILTER_DROP", drops)
    assert run.drop_agrees("ip_error/IP_INADDRERRORS + kfree/NOT_SPECIFIED", drops)
    assert not run.drop_agrees("ip_error/IP_INADDRERRORS + nft_do_chain/NETFILTER_DROP", drops)
    assert not run.drop_agrees("none", drops)
    assert run.drop_agrees("none", {("kfree", "NOT_SPECIFIED", "ctr"): 1})


def test_table_of_a_saved_run(tmp_path, capsys):
    rows = [{"scenario": "x_one", "family": 6, "proto": "tcp", "stall": True, "verdict": "RIGHT", "cause": "c",
             "seconds": 1.5, "fix_verified": True, "drop_agrees": True, "measured": ["f/R in host x2"]},
            {"scenario": "x_two", "family": 4, "proto": "udp", "stall": False, "verdict": "BROKEN",
             "note": "attempt() succeeds before the fix"}]
    saved = tmp_path / "run.jsonl"
    saved.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert run.main(["--table", str(saved)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["x_one", "v6/tcp", "stall", "f/R", "in", "host", "x2", "yes", "RIGHT", "c", "1.5", "yes"]
    assert out[3].split()[:3] == ["x_two", "v4/udp", "-"] and "BROKEN" in out[3]
    assert out[-1] == "2 scenarios: RIGHT 1, BROKEN 1"
    assert run.main(["--table", str(tmp_path / "missing")]) == 2
