#!/usr/bin/env python3
"""The kernel side of `dnattrace watch` on another port, measured seconds apart (scripts/bench
watchtoggle [--rounds R] [--connections N]).

`bench watch` starts a watch process for each run, so the runs it compares are 10-30 s apart, and on
this VM the connection rate drifts by 20-30% over such spans: a 3% effect does not stand out from 16 or
30 rounds. Here one process loads watch's programs once (filter on another port, as in bench watch's
b) and the floor's empty programs (tests/bpf/floor.bpf.c), and each round makes three short runs a few
seconds apart, in random order:
  a  nothing attached
  b  watch's programs attached (WatchTracer.attach / detach: the same programs, maps and links as a
     watch process's; its user space, which sleeps in b, is left out)
  f  the floor's empty programs attached at the same points
  t  bpftrace counting kfree_skb, consume_skb, netif_receive_skb and fib_table_lookup (the reference a
     watch on a busy port must beat; bench_watch.BPFTRACE_PROG)
Each run drives the DNAT path with several client processes (--clients, as bench watch).
A ratio is the median over rounds of each round's own ratio; the spread is given as the middle half
of the rounds' ratios and the standard error of the median (1.25 sd / sqrt(rounds)).
"""
import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_watch as bw  # noqa: E402
from dnattrace.watch import tracer as tr  # noqa: E402

SETTLE_S = 0.3     # after attaching or detaching, before the run


def spread(ratios):
    q = statistics.quantiles(ratios, n=4)
    se = 1.25 * statistics.stdev(ratios) / len(ratios) ** 0.5
    return "%.3f (middle half %.3f-%.3f, standard error %.3f, %d rounds)" % (
        statistics.median(ratios), q[0], q[2], se, len(ratios))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=10 ** 6,
                    help="at most this many connections per client and run (default: --seconds decides)")
    ap.add_argument("--seconds", type=float, default=1.0, help="each run lasts this long (default 1)")
    ap.add_argument("--clients", type=int, default=bw.CLIENTS, help="client processes per run (default %d)" % bw.CLIENTS)
    ap.add_argument("--rounds", type=int, default=40, help="rounds of a, b, f and t (default 40)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench watchtoggle: needs root (namespaces, BPF)")
    bw.CLIENTS = args.clients
    conds = "abft"
    results = {c: [] for c in conds}
    with bw.bench_lab("bt", args.connections, args.seconds) as inst:
        host = "/run/netns/" + inst.host_ns
        watch = tr.WatchTracer([tr.FilterEntry(6, bw.OTHER_PORT)], [host], max_new=20)
        floor = bw.FloorObject()
        print("watch's points on this kernel: %s" % "; ".join("%s: %s" % (point, ", ".join(progs))
                                                         for point, progs in watch.chosen.items()))
        print("the floor's: %s%s" % (", ".join(floor.names), " and netfilter links" if floor.links else ""))
        try:
            watch.start()
            watch.detach()
            print("%-5s %-4s %8s %6s %8s %9s" % ("round", "cond", "conns", "fail", "conn/s", "us CPU/c"))
            shuffle = random.Random(args.seed)
            for rnd in range(1, args.rounds + 1):
                for cond in shuffle.sample(conds, len(conds)):
                    links, bpftrace = [], None
                    if cond == "b":
                        watch.attach()
                    elif cond == "f":
                        links = floor.attach(host)
                    elif cond == "t":
                        bpftrace = bw.Bpftrace()
                    try:
                        time.sleep(SETTLE_S)
                        r = bw.timed_run(inst, args.connections, args.seconds)
                    finally:
                        watch.detach()
                        for link in links:
                            link.close()
                        if bpftrace:
                            bpftrace.stop()
                    results[cond].append(r)
                    print("%-5d %-4s %8d %6d %8.0f %9.1f" % (rnd, cond, r["ok"], r["failed"], r["rate"], r["cpu_us"]),
                          flush=True)
        finally:
            watch.close()
            floor.close()
    print()
    failed = sum(r["failed"] for c in conds for r in results[c])
    if failed:
        print("WARNING: %d connects failed during the runs: the rates are not comparable (%s)"
              % (failed, bw.conntrack_note()))
    print("%d client processes, %g s per run; t = bpftrace -e '%s'" % (bw.CLIENTS, args.seconds, bw.BPFTRACE_PROG))
    for cond, label in (("b", "watch's programs, another port"), ("f", "empty programs at b's points"),
                        ("t", "bpftrace counting 4 tracepoints")):
        print("%s/a (%s): rate %s" % (cond, label, spread(bw.round_ratios(results, cond))))
        print("    a's CPU per connection / %s's: %s"
              % (cond, spread(bw.round_ratios(results, cond, "cpu_us", per_cost=True))))
    ok = statistics.median(bw.round_ratios(results, "b")) >= bw.TARGET_B
    print("b/a target >= %.2f: %s" % (bw.TARGET_B, bw.verdict(ok)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
