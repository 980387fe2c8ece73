"""Under real load: a lab host's published port at thousands of connections a second (dnattrace/lab/load.py),
watched at every --max-rate and diagnosed. Not timed assertions: what must hold at whatever rate this
machine makes (memory bounded, no event lost, every connection accounted with its real outcome, a
healthy port said healthy)."""
import json
import subprocess
import sys

import pytest

from conftest import slow

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-m", "dnattrace.cli"]
BUDGET_MB = 60.0
# Outcomes a connection of a healthy port must never get: each would be a failure the clients did not see.
FAILURES = {"dropped", "no-reply", "refused", "reply-dropped", "stalled", "incomplete"}


@pytest.fixture
def busy(root):
    """Factory: a LoadHost (the failing share as given), brought down after the test, even on failure."""
    from dnattrace.lab import load
    made = []

    def up(fail_every=0):
        h = load.LoadHost(prefix="tld", fail_every=fail_every).__enter__()
        made.append(h)
        return h

    yield up
    for h in made:
        h.down()


def test_load_host_makes_its_share_of_failures_and_cleans_up(busy):
    """The harness itself: a healthy port takes every connection; with fail_every=10, one in ten is DNATed
    to an address nobody holds and times out; and nothing of the lab is left afterwards."""
    from dnattrace import lab
    h = busy()
    r = h.run(seconds=slow(2), clients=1, timeout=3.0)
    assert r["ok"] > 1000 and r["failed"] == 0, r
    name = h.inst.name
    h.down()
    assert name not in [i.name for i in lab.instances()]
    h = busy(fail_every=10)
    r = h.run(seconds=slow(3), clients=1, inflight=256)
    assert set(r["errors"]) == {"timeout"}, r
    assert 0.06 <= r["failed"] / r["made"] <= 0.14, r


@pytest.mark.parametrize("rate", [0, 20, 2000])
def test_watch_is_bounded_and_exact_under_load(busy, rate, tmp_path):
    """Two clients at thousands of connections a second through a healthy lab host, none failing: watch
    stays under its memory budget, loses no event (it admits fewer connections instead), accounts every
    connection the clients made (admitted and followed to an outcome, or counted as not followed), and
    gives no followed connection a failing outcome. SIGINT under load prints the summary, exit 0."""
    h = busy()
    w = h.watch(rate, slow(8), str(tmp_path / "watch.jsonl"))
    assert w["exit"] == 0, w["stderr"]
    peak, summary, totals = w["peak_mb"], w["summary"], w["clients"]
    assert summary["type"] == "summary"
    assert totals["failed"] == 0 and totals["ok"] > 2000, totals
    assert peak < BUDGET_MB, "peak RSS %.1f MB" % peak
    assert summary["lost_events"] == 0
    # every connection the clients made was decided once: admitted, or counted as not followed
    assert summary["admitted"] + summary["not_followed"] == totals["made"], (summary["admitted"], summary["not_followed"])
    assert summary["followed"] == summary["admitted"], "every admitted connection is in the summary"
    if rate:
        assert summary["admitted"] <= rate * (slow(8) + 3)
    outcomes = {}
    for c in summary["connections"]:
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    for o, n in summary["not_kept_by_outcome"].items():
        outcomes[o] = outcomes.get(o, 0) + n
    assert not FAILURES & set(outcomes), outcomes
    assert outcomes.get("answered", 0) >= 0.99 * summary["admitted"], outcomes


def test_diagnose_on_a_healthy_busy_port_finds_no_fault(busy):
    """diagnose while two clients keep the port busy: the clients' own FINs, RSTs and ACKs, and the
    connections that began before it looked, are no failing attempts; exit 0, twice."""
    from dnattrace.lab import load
    h = busy()
    clients = h.start(seconds=slow(40), clients=2, timeout=3.0)
    try:
        for _ in range(2):
            p = subprocess.run(CLI + ["diagnose", "--netns", h.host_ns, "--port", str(load.PORT), "--timeout", "10"],
                               capture_output=True, text=True, timeout=slow(60))
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-1000:]
            assert "lost" not in p.stdout, p.stdout[-3000:]
    finally:
        clients.kill()


def test_diagnose_on_a_busy_port_with_a_failing_share_names_the_share_the_backend_and_the_cause(busy):
    """One connection in ten DNATed (a `statistic` rule) to an address nobody holds, two clients keeping
    the port busy: diagnose says the failures are intermittent and how many of the followed connections
    failed, names the backend they went to and why (nobody on this host holds it), and exits 1."""
    from dnattrace.lab import load
    h = busy(fail_every=10)
    clients = h.start(seconds=slow(40), clients=2, timeout=3.0)
    try:
        p = subprocess.run(CLI + ["diagnose", "--json", "--netns", h.host_ns, "--port", str(load.PORT),
                                  "--timeout", "10"], capture_output=True, text=True, timeout=slow(90))
    finally:
        clients.kill()
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-1000:]
    d = [json.loads(l) for l in p.stdout.splitlines() if '"diagnosis"' in l][-1]
    top = d["findings"][0]
    assert top["cause_id"] == "neigh-failed", top
    assert load.UNHELD in top["object"] and "no namespace on this host" in " ".join(top["evidence"]), top
    assert top["evidence"][0].startswith("intermittent: ") and top.get("share"), top
