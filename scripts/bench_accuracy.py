#!/usr/bin/env python3
"""Accuracy of `dnattrace diagnose` over every lab scenario (scripts/bench accuracy [--scenario ID ...]).

For each scenario: lab up (namespace variant), `dnattrace diagnose --json` through the CLI while the
scenario's client makes two bounded attempts (lab.attempts.background), lab down. Prints a table:
scenario, ground truth (cause; drop site or "no drop"), diagnosed cause, right/wrong, exit code, and the
time from the first failed attempt being seen to the cause being ready (what the CLI reports), then the
totals. The causes match on what the kernel and the system say, never on the scenario (the lab is a
sample of the world): this is the measure of how often that sample is explained right.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnattrace import lab  # noqa: E402
from dnattrace.lab import attempts, scenarios  # noqa: E402
from dnattrace.netns import build  # noqa: E402
from dnattrace.output import tables  # noqa: E402

CLI = [sys.executable, "-m", "dnattrace.cli"]


def diagnose(inst, timeout):
    args = CLI + ["diagnose", "--json", "--port", str(inst.target_port), "--proto", inst.proto,
                  "--timeout", str(timeout)] + (["--netns", inst.host_ns] if inst.host_ns else [])
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = p.stdout.readline()
    with attempts.background(inst) if start else contextlib.nullcontext():
        out, err = p.communicate(timeout=timeout + 30)
    d = json.loads(out) if out.strip() else {}
    return p.returncode, d, err.strip().splitlines()[-1:], time.monotonic() - t0


def one(sc):
    inst = lab.up(sc.id, prefix=build.unique("ba"), docker=False)
    try:
        rc, d, err, wall = diagnose(inst, timeout=10 if sc.drop_delay else 8)
    finally:
        lab.down(inst.name)
    got = d.get("top_cause", "error: %s" % (err[0] if err else "no output"))
    truth = "%s/%s in %s" % (sc.drop_function, sc.drop_reason, sc.drop_ns) if sc.drop_function else "no drop"
    ms = d.get("explain_ms_after_first_failure")
    return {"scenario": sc.id, "ground truth": sc.cause, "where": truth, "diagnosed": got,
            "right": "yes" if got == sc.cause else "NO", "exit": rc,
            "first failure -> cause": "%d ms" % ms if ms is not None else "-", "wall": "%.1f s" % wall}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", help="only these (repeatable); default: all")
    a = ap.parse_args(argv)
    chosen = [scenarios.get(s) for s in a.scenario] if a.scenario else scenarios.SCENARIOS
    rows = []
    for sc in chosen:
        rows.append(one(sc))
        print("%-32s %-22s %-22s %s" % (sc.id, sc.cause, rows[-1]["diagnosed"], rows[-1]["right"]), flush=True)
    print()
    print(tables.table(rows, list(rows[0])))
    right = sum(r["right"] == "yes" for r in rows)
    print("\n%d of %d scenarios diagnosed right" % (right, len(rows)))
    return 0 if right == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
