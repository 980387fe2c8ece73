#!/usr/bin/env python3
"""Accuracy of `dnattrace diagnose` over every lab scenario (scripts/bench accuracy [--scenario ID ...]),
and with --blind over the blind set too (blind/: scenarios built from public reports by someone who did
not write the causes, judged on the object the top finding names; see blind/README.md).

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


def blind():
    """The blind set through its own harness (python3 -m blind.run --json): one row per scenario, its
    verdict (RIGHT, UNEXPLAINED: not wrong, not right; WRONG; BROKEN/ERROR: the scenario itself failed)
    and diagnose's time from its start to its finding."""
    p = subprocess.run([sys.executable, "-m", "blind.run", "--json"], stdout=subprocess.PIPE, text=True,
                       timeout=3600)
    rows = []
    for line in p.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        rows.append({"scenario": r.get("scenario", "?"), "verdict": r.get("verdict", "?"),
                     "diagnosed": r.get("cause", "-"), "exit": r.get("exit", "-"),
                     "start -> finding": "%.1f s" % r["seconds"] if isinstance(r.get("seconds"), (int, float)) else "-",
                     "fix verified": {True: "yes", False: "NO"}.get(r.get("fix_verified"), "-")})
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", help="only these (repeatable); default: all")
    ap.add_argument("--blind", action="store_true", help="also the blind set (blind/)")
    ap.add_argument("--blind-only", action="store_true", help="only the blind set")
    a = ap.parse_args(argv)
    chosen = [] if a.blind_only else [scenarios.get(s) for s in a.scenario] if a.scenario else scenarios.SCENARIOS
    rows = []
    for sc in chosen:
        rows.append(one(sc))
        print("%-32s %-22s %-22s %s" % (sc.id, sc.cause, rows[-1]["diagnosed"], rows[-1]["right"]), flush=True)
    right = sum(r["right"] == "yes" for r in rows)
    if rows:
        print()
        print(tables.table(rows, list(rows[0])))
        print("\nlab: %d of %d scenarios diagnosed right" % (right, len(rows)))
    ok = right == len(rows)
    if a.blind or a.blind_only:
        b = blind()
        if b:
            print()
            print(tables.table(b, list(b[0])))
        n = {v: sum(r["verdict"] == v for r in b) for v in ("RIGHT", "UNEXPLAINED", "WRONG")}
        print("\nblind: %d of %d right, %d unexplained, %d wrong" % (n["RIGHT"], len(b), n["UNEXPLAINED"], n["WRONG"]))
        ok = ok and n["WRONG"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
