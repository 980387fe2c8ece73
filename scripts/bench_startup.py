#!/usr/bin/env python3
"""Start-up benchmark: how long from nothing to probes attached, for dnattrace and for bpftrace.

- dnattrace watch, the plain invocation (issue 26): `dnattrace watch --port P` in the root namespace,
  run as pip's console script runs it (a script importing dnattrace.cli, this checkout first on the
  path), from exec to its 'Watching' line; with this boot's caches (warm) and with an empty RUN_DIR
  (cold: the capability trials and the BTF enum worked out again, as on the first run after a boot).
- dnattrace watch: exec of `watch --port P --netns HOST` on a lab host to its 'Watching' line (probes
  attached; the capability trials' answers and the BTF drop-reason enum are kept per boot, so this is
  the start-up users see after the first run of a boot). -v's start-up lines of one run are printed too.
- dnattrace watch --duration 1: the whole process, wall and CPU (user + system, from wait4) and peak
  memory (ru_maxrss).
- bpftrace, in the same rounds: `bpftrace -e 'tracepoint:skb:kfree_skb {} BEGIN { exit(); }'` (bpftrace
  runs BEGIN only once every probe is attached, so its lifetime is start-up to attached, plus exit), and
  the same with `interval:s:1 { exit(); }` for the 1 s run.
- dnattrace doctor --json in a fresh process (every capability trial), and `capabilities.probe()` alone.

Goals (issue 26): the plain invocation < 300 ms warm, < 600 ms cold; (issue 17) --netns HOST < 300 ms; a 1 s watch's whole process < 1.35 s wall and < 0.3 s CPU;
doctor < 500 ms (DESIGN.md). dnattrace's own modules are byte-compiled first (as a pip install leaves
them: this machine sets PYTHONDONTWRITEBYTECODE, which would make every run compile them again).
Prints milliseconds (median, min, max) and the verdicts; the runs of each row are interleaved.
Run as root: `sudo scripts/bench startup [-n RUNS] [--json]`.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))       # run from a checkout without installing

BUDGET_MS = 500.0                   # doctor
GOAL_WATCHING_MS = 300.0
GOAL_COLD_MS = 600.0
PLAIN_PORT = 18080                  # no lab, no container: the root namespace's own port
CONSOLE_SCRIPT = """#!%s
import re
import sys
from dnattrace.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""
GOAL_WALL_1S_MS = 1350.0
GOAL_CPU_1S_MS = 300.0
BPFTRACE_PROG = "tracepoint:skb:kfree_skb {} BEGIN { exit(); }"
BPFTRACE_1S = "tracepoint:skb:kfree_skb {} interval:s:1 { exit(); }"


def time_process(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    if p.returncode not in (0, 3):      # doctor exits 3 on a kernel without the minimum: still timed
        raise SystemExit("bench startup: %s failed (%d): %s" % (cmd[0], p.returncode, p.stderr.strip()[-300:]))
    return ms


def time_to_watching(cmd, env=None):
    """From exec to watch's first line ('Watching', said once every probe is attached)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    ms = (time.perf_counter() - t0) * 1000
    p.wait(timeout=60)
    if "Watching" not in line:
        raise SystemExit("bench startup: watch did not start: %s" % p.stderr.read().strip()[-300:])
    return ms


def whole_process(cmd):
    """(wall ms, CPU ms, peak RSS MB) of a process run to its end."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("bench startup: %s failed: %s" % (" ".join(cmd[:4]), p.stderr.read().strip()[-300:]))
    return wall, (usage.ru_utime + usage.ru_stime) * 1000, usage.ru_maxrss / 1024.0


def cold_to_watching(cmd, env):
    """time_to_watching with an empty RUN_DIR: nothing this boot's earlier runs kept is there."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as run_dir:
        return time_to_watching(cmd, dict(env, DNATTRACE_RUN_DIR=run_dir))


def console_script(tmp):
    """A copy of the script pip installs for `dnattrace` (setup.cfg's console_scripts), for this Python."""
    path = os.path.join(tmp, "dnattrace")
    with open(path, "w") as f:
        f.write(CONSOLE_SCRIPT % sys.executable)
    os.chmod(path, 0o755)
    return path


def phases(cmd, env=None):
    """watch -v's start-up lines, each with the time since exec at which it was printed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = []
    for line in p.stdout:
        out.append("%6.0f ms  %s" % ((time.perf_counter() - t0) * 1000, line.rstrip()))
        if "Watching" in line:
            break
    p.wait(timeout=60)
    return out


def plain_invocation(runs, add):
    """`dnattrace watch --port P` in the root namespace, warm and cold, interleaved; returns the row names
    (warm first) and -v's start-up lines of one warm run."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))    # this checkout, not whatever pip installed
    rows = ["watch --port P (root ns, console script): exec to 'Watching', warm",
            "watch --port P (root ns, console script): exec to 'Watching', cold RUN_DIR"]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        argv = ["watch", "--port", str(PLAIN_PORT), "--duration", "0.2"]
        script = [console_script(tmp)] + argv
        time_to_watching(script, env)       # this boot's caches are made from here on
        steps = phases(script[:1] + ["-v"] + argv, env)
        for _ in range(runs):
            add(rows[0], time_to_watching(script, env))
            add(rows[1], cold_to_watching(script, env))
    return rows, steps


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

    # byte-compiled once here (PYTHONDONTWRITEBYTECODE would recompile every run); a read-only tree (the
    # kernel matrix's guests share the host's /) keeps what the host compiled
    subprocess.run([sys.executable, "-m", "compileall", "-q", "dnattrace"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    from dnattrace import lab
    from dnattrace.netns import build
    cli = [sys.executable, "-m", "dnattrace.cli"]
    doctor_cmd = cli + ["doctor", "--json"]
    bpftrace_cmd = ["bpftrace", "-e", BPFTRACE_PROG]
    bpftrace_1s = ["bpftrace", "-e", BPFTRACE_1S]
    time_process(doctor_cmd)        # warm the page cache for both, so neither pays for a cold disk
    time_process(bpftrace_cmd)
    samples: dict[str, list] = {}

    def add(name, value):
        samples.setdefault(name, []).append(value)

    plain_rows, plain_steps = plain_invocation(args.runs, add)
    inst = lab.up("healthy", prefix=build.unique("bs"))
    try:
        watch = cli + ["watch", "--port", str(inst.target_port), "--netns", inst.host_ns]
        time_to_watching(watch + ["--duration", "0.2"])   # this boot's caches are made from here on
        steps = phases(cli + ["-v"] + watch[len(cli):] + ["--duration", "0.2"])
        for _ in range(args.runs):
            add("watch --port P --netns HOST: exec to 'Watching'", time_to_watching(watch + ["--duration", "0.2"]))
            add("bpftrace kfree_skb: exec to exit after attach (BEGIN)", time_process(bpftrace_cmd))
            wall, cpu, rss = whole_process(watch + ["--duration", "1"])
            add("watch --duration 1: whole process wall", wall)
            add("watch --duration 1: whole process CPU", cpu)
            add("watch --duration 1: peak RSS (MB)", rss)
            wall, cpu, _ = whole_process(bpftrace_1s)
            add("bpftrace, 1 s interval: whole process wall", wall)
            add("bpftrace, 1 s interval: whole process CPU", cpu)
    finally:
        lab.down(inst.name)
    for _ in range(args.runs):
        add("dnattrace doctor --json (process)", time_process(doctor_cmd))
        add("capabilities.probe() (in process)", time_probe())
    results = {k: summary(v) for k, v in samples.items()}
    med = {k: v["median_ms"] for k, v in results.items()}
    goals = [
        ("plain, warm", med[plain_rows[0]], GOAL_WATCHING_MS),
        ("plain, cold", med[plain_rows[1]], GOAL_COLD_MS),
        ("--netns, warm", med["watch --port P --netns HOST: exec to 'Watching'"], GOAL_WATCHING_MS),
        ("1 s watch, wall", med["watch --duration 1: whole process wall"], GOAL_WALL_1S_MS),
        ("1 s watch, CPU", med["watch --duration 1: whole process CPU"], GOAL_CPU_1S_MS),
        ("doctor", med["dnattrace doctor --json (process)"], BUDGET_MS),
    ]
    verdict = {"goals": {name: {"median_ms": got, "goal_ms": goal, "met": got < goal} for name, got, goal in goals},
               "watch_phases": steps, "plain_phases": plain_steps}
    if args.json:
        print(json.dumps({"bench": "startup", "results": results, **verdict}, sort_keys=True))
    else:
        from tabulate import tabulate
        print("load average %.2f %.2f %.2f on %d CPUs (other work makes these noisy)" % (os.getloadavg() + (os.cpu_count(),)))
        print("watch -v --port %d (root namespace, console script, warm), one run (ms since exec):" % PLAIN_PORT)
        print("\n".join("  " + l for l in plain_steps))
        print("watch -v --port P --netns HOST, one run (ms since exec):")
        print("\n".join("  " + l for l in steps))
        rows = [(k, v["median_ms"], v["min_ms"], v["max_ms"], v["runs"]) for k, v in results.items()]
        print(tabulate(rows, headers=("measure (ms unless said)", "median", "min", "max", "runs")))
        for name, got, goal in goals:
            print("%-20s median %6.0f ms, goal < %.0f ms: %s" % (name, got, goal, "ok" if got < goal else "MISSED"))
    return 0 if all(got < goal for _, got, goal in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
