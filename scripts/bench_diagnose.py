#!/usr/bin/env python3
"""Benchmark for `dnattrace diagnose` and `dnattrace demo` (scripts/bench diagnose [--runs N] [--demos N]).

explain: on one lab `forwarding-off` instance (namespace variant), diagnose.run() N times (default 5), each
         with two client connects started through its `traffic` callable, as `demo` does. The figure is
         Result.explained_at - Result.first_failure_at: from the first failed attempt being seen to the
         causes being ready (it includes diagnose's settle time after the failure and the second evidence
         snapshot). Also shown: from the first SYN sent to the causes being ready, and the top cause.
         Budget: 1 s.
demo:    wall time of `dnattrace demo` as a subprocess, M times (default 3), from start to exit; exit 0
         means the lab's ground truth was diagnosed. Budget: 15 s.

The lab is removed in a finally, and so are the client processes; the demo removes its own lab.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnattrace.diagnose import run as dg, probeclient  # noqa: E402
from dnattrace import lab
from dnattrace.watch import resolve as targets  # noqa: E402
from dnattrace.netns import build as net  # noqa: E402

EXPLAIN_BUDGET_S, DEMO_BUDGET_S = 1.0, 15.0
SCENARIO = "forwarding-off"
DNATTRACE = "import sys; from dnattrace.cli import main; sys.argv[0] = 'dnattrace'; sys.exit(main())"


def explain_runs(runs, timeout):
    from dnattrace import forked
    forked.stay_light()     # as the diagnose command does: evidence snapshots in a child process
    inst = lab.up(SCENARIO, prefix=net.unique("bd"), docker=False)
    rows = []
    try:
        t = inst.target()
        expected = lab.scenarios.get(SCENARIO).cause
        for i in range(runs):
            proc = None
            sent = {}

            def traffic():
                nonlocal proc
                sent["at"] = time.monotonic()
                proc = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 2, 2.0)
            try:
                res = dg.run(t, timeout=timeout, traffic=traffic)
            finally:
                probeclient.stop(proc)
            top = res.findings[0].cause_id if res.findings else "none"
            if res.first_failure_at is None:
                rows.append(dict(run=i + 1, explain=None, total=None, top=top, ok=False, lost=res.lost_events))
            else:
                rows.append(dict(run=i + 1, explain=res.explained_at - res.first_failure_at,
                                 total=res.explained_at - sent["at"], top=top, ok=top == expected,
                                 lost=res.lost_events))
            r = rows[-1]
            print("explain run %d: first failure -> cause %s, first SYN sent -> cause %s, top cause %s (%s), "
                  "lost events %d" % (r["run"], fmt(r["explain"]), fmt(r["total"]), top,
                                      "right" if r["ok"] else "WRONG, expected %s" % expected, r["lost"]),
                  flush=True)
    finally:
        lab.down(inst.name)
    return rows


def demo_runs(runs):
    rows = []
    for i in range(runs):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", DNATTRACE, "demo"], capture_output=True, text=True, timeout=120)
        wall = time.monotonic() - t0
        last = (p.stdout.strip().splitlines() or [""])[-1]
        rows.append(dict(run=i + 1, wall=wall, rc=p.returncode))
        print("demo run %d: %.2f s, exit %d: %s" % (i + 1, wall, p.returncode, last or p.stderr.strip()[-200:]),
              flush=True)
    return rows


def fmt(s):
    return "-" if s is None else "%.3f s" % s


def spread(values):
    return "median %.3f s (min %.3f, max %.3f)" % (statistics.median(values), min(values), max(values))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="diagnose.run() repetitions (default 5)")
    ap.add_argument("--demos", type=int, default=3, help="`dnattrace demo` repetitions (default 3)")
    ap.add_argument("--timeout", type=float, default=8.0, help="diagnose timeout per run (default 8, as demo)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench diagnose: needs root (namespaces, BPF)")

    explain = explain_runs(args.runs, args.timeout)
    demos = demo_runs(args.demos)

    print()
    met = True
    seen = [r["explain"] for r in explain if r["explain"] is not None]
    if seen:
        ok = len(seen) == len(explain) and max(seen) <= EXPLAIN_BUDGET_S
        print("first failure seen -> cause ready: %s over %d runs; budget %.0f s: %s"
              % (spread(seen), len(seen), EXPLAIN_BUDGET_S, "ok" if ok else "MISSED"))
        print("first SYN sent -> cause ready:     %s" % spread([r["total"] for r in explain if r["total"]]))
        met &= ok
    else:
        print("first failure seen -> cause ready: no run saw a failure: MISSED")
        met = False
    right = sum(r["ok"] for r in explain)
    print("right top cause: %d of %d runs: %s" % (right, len(explain), "ok" if right == len(explain) else "MISSED"))
    met &= right == len(explain)
    walls = [r["wall"] for r in demos]
    if walls:
        ok = max(walls) <= DEMO_BUDGET_S and all(r["rc"] == 0 for r in demos)
        print("dnattrace demo wall time: %s over %d runs, exits %s; budget %.0f s: %s"
              % (spread(walls), len(walls), ",".join(str(r["rc"]) for r in demos), DEMO_BUDGET_S,
                 "ok" if ok else "MISSED"))
        met &= ok
    print("all targets met" if met else "TARGETS MISSED (see above)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
