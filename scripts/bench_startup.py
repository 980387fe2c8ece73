#!/usr/bin/env python3
"""Start-up benchmark: how long from nothing to probes attached, for dnattrace and for bpftrace.

- dnattrace: `dnattrace doctor --json` in a fresh process (Python start, imports, open + load + attach +
  detach of every doctor probe, output, exit), and `capabilities.probe()` alone, in this process.
- dnattrace watch: exec of `watch --port P --netns HOST` on a lab host to its 'Watching' line (probes
  attached; the capability trials' answers are kept per boot, so this is the start-up users see after
  the first run of a boot).
- bpftrace: `bpftrace -e 'tracepoint:skb:kfree_skb {} BEGIN { exit(); }'`: bpftrace runs BEGIN only once
  every probe is attached, so the process's lifetime is start-up to attached, plus exit.

Budget (DESIGN.md): dnattrace under 0.5 s. Prints milliseconds (median, min, max) and the ratio.
Run as root: `sudo scripts/bench startup` or `sudo scripts/bench_startup.py [-n RUNS] [--json]`.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))       # run from a checkout without installing

BUDGET_MS = 500.0
BPFTRACE_PROG = "tracepoint:skb:kfree_skb {} BEGIN { exit(); }"


def time_process(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    if p.returncode not in (0, 3):      # doctor exits 3 on a kernel without the minimum: still timed
        raise SystemExit("bench startup: %s failed (%d): %s" % (cmd[0], p.returncode, p.stderr.strip()[-300:]))
    return ms


def time_to_watching(cmd):
    """From exec to watch's first line ('Watching', said once every probe is attached)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    ms = (time.perf_counter() - t0) * 1000
    p.wait(timeout=60)
    if "Watching" not in line:
        raise SystemExit("bench startup: watch did not start: %s" % p.stderr.read().strip()[-300:])
    return ms


def time_probe():
    from dnattrace.kernel import capabilities
    t0 = time.perf_counter()
    capabilities.probe(refresh=True)
    return (time.perf_counter() - t0) * 1000


def summary(samples):
    return {"median_ms": round(statistics.median(samples), 1), "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1), "runs": len(samples)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench startup", description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=10, help="runs of each (default 10)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench startup: needs root (it loads BPF programs)")
    if not shutil.which("bpftrace"):
        raise SystemExit("bench startup: bpftrace is missing (apt-get install bpftrace)")

    from dnattrace import lab
    from dnattrace.netns import build
    doctor_cmd = [sys.executable, "-m", "dnattrace.cli", "doctor", "--json"]
    bpftrace_cmd = ["bpftrace", "-e", BPFTRACE_PROG]
    time_process(doctor_cmd)        # warm the page cache for both, so neither pays for a cold disk
    time_process(bpftrace_cmd)
    inst = lab.up("healthy", prefix=build.unique("bs"))
    try:
        watch_cmd = [sys.executable, "-m", "dnattrace.cli", "watch", "--port", str(inst.target_port), "--netns",
                     inst.host_ns, "--duration", "0.2"]
        time_to_watching(watch_cmd)         # this boot's capability answers are kept from here on
        watching = summary([time_to_watching(watch_cmd) for _ in range(args.runs)])
    finally:
        lab.down(inst.name)
    results = {
        "dnattrace watch --port P: exec to 'Watching'": watching,
        "dnattrace doctor --json (process)": summary([time_process(doctor_cmd) for _ in range(args.runs)]),
        "capabilities.probe() (in process)": summary([time_probe() for _ in range(args.runs)]),
        "bpftrace kfree_skb (process)": summary([time_process(bpftrace_cmd) for _ in range(args.runs)]),
    }
    ours = results["dnattrace doctor --json (process)"]["median_ms"]
    theirs = results["bpftrace kfree_skb (process)"]["median_ms"]
    verdict = {"ratio_bpftrace_over_dnattrace": round(theirs / ours, 2), "budget_ms": BUDGET_MS,
               "within_budget": ours < BUDGET_MS}
    if args.json:
        print(json.dumps({"bench": "startup", "results": results, **verdict}, sort_keys=True))
    else:
        from tabulate import tabulate
        rows = [(k, v["median_ms"], v["min_ms"], v["max_ms"], v["runs"]) for k, v in results.items()]
        print(tabulate(rows, headers=("start-up to probes attached", "median ms", "min", "max", "runs")))
        print("bpftrace / dnattrace = %.2f; dnattrace budget %.0f ms: %s"
              % (verdict["ratio_bpftrace_over_dnattrace"], BUDGET_MS, "ok" if verdict["within_budget"] else "OVER"))
    return 0 if verdict["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
