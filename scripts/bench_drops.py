#!/usr/bin/env python3
"""Benchmarks for `dnattrace drops` (scripts/bench drops [--packets N] [--seconds S] [--rounds R]).

flood:    N UDP datagrams (default 1,000,000) to a closed port inside a namespace made for the run, sent by
          two bounded sender processes while `dnattrace drops --json` counts; checks counted == sent and
          reports the drops process's CPU as a share of one core (from /proc/PID/stat).
overhead: UDP request/response rate between two namespaces over a veth, with nothing attached, with
          `dnattrace drops` attached, and with an equivalent bpftrace one-liner on the same tracepoint;
          each attached run is paired with the baseline runs around it (R rounds) and the median paired
          ratio is reported. Prints both ratios side by side.

Everything runs in namespaces created here and removed at the end, even on failure.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnattrace.netns import build as net  # noqa: E402

CLOSED_PORT = 9
RR_PORT = 7007
RR_CPU = str(os.cpu_count() - 1)
A_IP, B_IP = "203.0.113.1", "203.0.113.2"
BPFTRACE = "tracepoint:skb:kfree_skb { @[kstack(3)] = count(); }"

SENDER = r"""
import socket, sys, time
n, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
data, dst, sent = b"x" * 18, ("127.0.0.1", %d), 0
while sent < n and (sent & 1023 or time.monotonic() < deadline):
    s.sendto(data, dst)
    sent += 1
print(sent)
""" % CLOSED_PORT

RR_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", %d))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(64)
        s.sendto(data, peer)
except socket.timeout:
    pass
""" % RR_PORT

RR_CLIENT = r"""
import socket, sys, time
seconds, limit = float(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((sys.argv[3], %d))
done, start = 0, time.monotonic()
end = start + seconds
while done < limit and (done & 255 or time.monotonic() < end):
    s.send(b"ping")
    s.recv(64)
    done += 1
print(done / (time.monotonic() - start))
""" % RR_PORT


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def drops_cli(*args):
    """Start `dnattrace drops --json ...`; returns (process, stdout lines list filled by a thread)."""
    p = subprocess.Popen([sys.executable, "-m", "dnattrace.cli", "drops", "--json", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    started = threading.Event()

    def reader():
        for line in p.stdout:
            lines.append(json.loads(line))
            if lines[-1]["type"] == "start":
                started.set()

    threading.Thread(target=reader, daemon=True).start()
    if not started.wait(15):
        p.kill()
        raise SystemExit("drops did not start: %s" % p.stderr.read())
    return p, lines


def stop(p, timeout=10):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def flood(packets, seconds):
    ns = net.unique("dtbf")
    net.add_netns(ns)
    try:
        p, lines = drops_cli("--netns", ns, "--proto", "udp", "--interval", "1")
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
        halves = [packets // 2, packets - packets // 2]
        senders = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(n), str(seconds)],
                                    stdout=subprocess.PIPE, text=True) for n in halves]
        sent = sum(int(s.communicate(timeout=seconds + 30)[0]) for s in senders)
        send_time = time.monotonic() - t0
        time.sleep(1.5)                     # one more interval so the last packets are read
        cpu1, t1 = cpu_seconds(p.pid), time.monotonic()
        stop(p)
        summary = next(o for o in reversed(lines) if o["type"] == "summary")
        counted = sum(r["count"] for r in summary["rows"] if r["reason"] == "NO_SOCKET")
        intervals = sum(r["count"] for o in lines if o["type"] == "interval" for r in o["rows"]
                        if r["reason"] == "NO_SOCKET")
        return {
            "sent": sent, "counted": counted, "counted_by_intervals": intervals,
            "overflow": summary["overflow"], "all_counted": counted == sent == intervals,
            "send_seconds": round(send_time, 2), "rate_pps": round(sent / send_time),
            "drops_cpu_pct_of_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "probe": summary["probe"],
        }
    finally:
        net.del_netns(ns)


class RrPair:
    """Two namespaces joined by a veth, for the request/response workload."""

    def __init__(self):
        self.a, self.b = net.unique("dtba"), net.unique("dtbb")
        net.add_netns(self.a)
        net.add_netns(self.b)
        va, vb = net.unique("dtva"), net.unique("dtvb")
        net.add_veth(va, vb, self.a, self.b)
        net.add_addr(va, A_IP + "/24", self.a)
        net.add_addr(vb, B_IP + "/24", self.b)

    def rate(self, seconds):
        # both ends pinned to one CPU: a ping-pong whose rate does not depend on where the scheduler puts them
        server = subprocess.Popen(["ip", "netns", "exec", self.b, "taskset", "-c", RR_CPU,
                                   sys.executable, "-c", RR_SERVER, "2"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            out = net.run(["taskset", "-c", RR_CPU, sys.executable, "-c", RR_CLIENT, str(seconds), "5000000", B_IP], netns=self.a,
                          timeout=seconds + 30).stdout
            return float(out)
        finally:
            server.kill()
            server.wait()

    def close(self):
        net.del_netns(self.a)
        net.del_netns(self.b)


def with_drops(pair, seconds):
    p, _lines = drops_cli("--interval", "1")
    try:
        return pair.rate(seconds)
    finally:
        stop(p)


def with_bpftrace(pair, seconds):
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "Attaching" not in (p.stdout.readline() or ""):
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bpftrace did not attach")
        threading.Thread(target=p.stdout.read, daemon=True).start()   # keep its pipe drained
        return pair.rate(seconds)
    finally:
        stop(p)


def overhead(seconds, rounds):
    """Paired runs: baseline, attached, baseline, ...; each attached run is compared with the mean of the
    baseline runs just before and after it, so slow drift (other load on the machine) cancels out."""
    pair = RrPair()
    runs = {"baseline": [], "drops": [], "bpftrace": []}
    ratios = {"drops": [], "bpftrace": []}
    try:
        pair.rate(1)   # warm-up
        prev = pair.rate(seconds)
        runs["baseline"].append(prev)
        for i in range(rounds):
            for name, attached in (("drops", with_drops), ("bpftrace", with_bpftrace))[:: 1 if i % 2 == 0 else -1]:
                rate = attached(pair, seconds)
                after = pair.rate(seconds)
                runs[name].append(rate)
                runs["baseline"].append(after)
                ratios[name].append(rate / ((prev + after) / 2))
                prev = after
    finally:
        pair.close()
    return {
        "workload": "UDP request/response over a veth between two namespaces (one CPU), %g s per run, "
                    "%d paired rounds" % (seconds, rounds),
        "rate_baseline": round(statistics.median(runs["baseline"])),
        "rate_drops": round(statistics.median(runs["drops"])),
        "rate_bpftrace": round(statistics.median(runs["bpftrace"])),
        "ratio_drops": round(statistics.median(ratios["drops"]), 3),
        "ratio_bpftrace": round(statistics.median(ratios["bpftrace"]), 3),
        "ratio_spread": {k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()},
        "runs": {k: [round(x) for x in v] for k, v in runs.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=120, help="bound on the flood's sending time")
    ap.add_argument("--rr-seconds", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_drops: needs root")
    f = flood(args.packets, args.seconds)
    o = overhead(args.rr_seconds, args.rounds)
    if args.json:
        print(json.dumps({"flood": f, "overhead": o}))
        return 0 if f["all_counted"] else 1
    print("flood: %d UDP datagrams to a closed port in a test namespace, %.1f s (%d pkt/s), probe %s"
          % (f["sent"], f["send_seconds"], f["rate_pps"], f["probe"]))
    print("  counted %d (intervals %d, overflow %d): %s" % (
        f["counted"], f["counted_by_intervals"], f["overflow"], "every drop counted" if f["all_counted"] else "MISMATCH"))
    print("  dnattrace drops CPU: %.2f%% of one core" % f["drops_cpu_pct_of_core"])
    print("overhead: %s" % o["workload"])
    print("  %-28s %12s %8s  %s" % ("", "req/s", "ratio", "(median of paired ratios; min..max)"))
    print("  %-28s %12d %8s" % ("nothing attached", o["rate_baseline"], "1.000"))
    for key, label in (("drops", "dnattrace drops"), ("bpftrace", "bpftrace kfree_skb kstack(3)")):
        lo, hi = o["ratio_spread"][key]
        print("  %-28s %12d %8.3f  %.3f..%.3f" % (label, o["rate_" + key], o["ratio_" + key], lo, hi))
    print("  runs: %s" % json.dumps(o["runs"]))
    return 0 if f["all_counted"] else 1


if __name__ == "__main__":
    sys.exit(main())
