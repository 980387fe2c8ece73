#!/usr/bin/env python3
"""Benchmark for `dnattrace watch` (scripts/bench watch [--connections N] [--seconds S] [--rounds R]).

Connection rate through the DNAT path of a lab `healthy` host (namespace variant): several client processes
(--clients) in the lab's client namespace open and close short TCP connections to the published address
198.51.100.1, which the host namespace DNATs to the container namespace, each as fast as its Python loop
can, for --seconds. The lab's own server (busybox httpd, one fork per connection) cannot keep up with that,
so the container side is a trivial accept-and-close server on port 81 (one process per CPU) started here,
published as 8081 by two rules added next to the lab's own (Docker's layout: a DNAT rule in nat/DOCKER and
an ACCEPT in filter/DOCKER), removed at the end.

--workload bulk (issue 26): each client sends one TCP stream through the DNAT for the run (throughput, in
64 KB writes); --workload rr: each request is a connection, a GET and a 100 KB answer read whole (HTTP/1.0).
The same conditions and ratios apply: a "unit" is a connection, a write or a request.

Conditions, interleaved in one run, in a new random order each round (--seed), so that drift and a place
in the round do not become part of one condition's figure:
  a  nothing attached
  b  `dnattrace watch --json` attached in the host namespace following ANOTHER port (9999): every packet
     of the benchmark passes the probes and is filtered out in the kernel
  c  `dnattrace watch --json` following the benchmark's own port (default mode: SYN / SYN-ACK / RST, at
     most --max-rate 20 new connections a second followed in full; the rest are counted, not lost)
  e  the same with `--max-rate 100` (a figure: what five times the default costs)
  f  no watch: empty programs (tests/bpf/floor.bpf.c) at the points b attaches to, as this kernel's probe
     plan chose them (the same tracepoints and functions, and netfilter positions in the host namespace
     where the hooks come from links): what those points cost by themselves (b's floor)
  d  the same with `--max-rate 0`: every connection followed in full (a figure, not a target: at ~10k
     connections a second this is what the Python side can decode, not what a person can read)
  g  the same in the host's and the container's namespaces: the points c attaches to (c's floor)
  t  bpftrace counting kfree_skb, consume_skb, netif_receive_skb and fib_table_lookup (BPFTRACE_PROG): the
     reference, "a bare counter"; b/t and c/t say whether watch is ahead of it in the same rounds
The watch runs as a subprocess, so its CPU (/proc/PID/stat) and peak RSS (VmHWM) are its own; it is
stopped with SIGINT and its JSON summary gives lost_events; in (c) the connections it reports are
compared with the connections made.

Targets (issue 26): b/a >= 0.95, c/a >= 0.90 (bulk and rr: b/a >= 0.98), b and c at or above bpftrace's counter in the same rounds
(b/t >= 1, c/t >= 1, when t runs), no events lost in c, every connection of c either followed (reported with
its SYN-ACK) or counted as not followed, watch RSS < 60 MB. Ratios are the median over rounds of each
round's own ratio (b_i / a_i): the machine's drift between rounds cancels out; each is printed with its
range and the standard error of the rounds' mean ratio (stdev / sqrt(rounds)), which says how far two
figures must be apart to differ. The defaults are issue 26's run: 12 rounds of a, b, c, the floors f and g,
and t. A missed target is printed as MISSED and the exit status is 1.

Everything lives in the lab's namespaces (removed by lab.down in a finally) and processes started here
(killed by pid in a finally).
"""
import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnattrace.lab import load  # noqa: E402
from dnattrace.netns import build as net  # noqa: E402

BENCH_PORT, SERVER_PORT, OTHER_PORT = load.PORT, load.SERVER_PORT, 9999
TARGET_B, TARGET_C, TARGET_RSS_MB = 0.95, 0.90, 60.0
TARGETS = {"b": TARGET_B, "c": TARGET_C}
# bulk and request/response (issue 26): watch on another port within 2% of nothing; c has no target there
TARGETS_BY_WORKLOAD = {"connect": TARGETS, "bulk": {"b": 0.98}, "rr": {"b": 0.98}}
SETTLE_S = 0.5
# After a watch has attached, before traffic starts (and the same in a). Could the watch's start-up
# (programs verified and loaded, kallsyms parsed, look-up children) leave work behind that slows b and
# c? BENCH_ATTACHED_PAUSE_S=2.5 did not change the ratios (16 rounds: b/a 0.922, c/a 0.858).
ATTACHED_PAUSE_S = float(os.environ.get("BENCH_ATTACHED_PAUSE_S", "0.3"))
LABELS = {"a": "no tracer", "b": "watch on another port", "c": "watch on this port",
          "d": "watch on this port, --max-rate 0", "e": "watch on this port, --max-rate 100",
          "f": "empty programs at b's points", "g": "empty programs at c's points",
          "t": "bpftrace counting 4 tracepoints"}
TICK = os.sysconf("SC_CLK_TCK")
RR_BODY = 100 * 1024

# connect, wait for the server's close, close; N times or until the deadline, whichever first; each
# connection bounded by 1 s. The server closes first, so TIME_WAIT stays on its side: a client that closed
# first would pile up TIME_WAIT sockets, and picking a free port among them costs more with every run (the
# machine's CPU per connection drifted by 50% across the runs of one benchmark that way). Several clients
# start together at `start` (CLOCK_MONOTONIC, the same in every process) and stop at the same deadline.
# --workload bulk: one connection per client, 64 KB writes until the deadline (a unit is one write), then
# a plain close; rr: a connection per request, a GET and the whole RR_BODY answer read (a unit is one
# answered request).
CLIENT = r"""
import json, socket, sys, time
n, start, seconds, addr, port = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
mode = sys.argv[6]
ok = failed = conns = 0
while time.monotonic() < start:
    time.sleep(0.001)
t0 = mark = time.monotonic()
end = start + seconds
CHUNK, chunks = 200, []   # the rate of each 200 units: the best of them is what the machine can do
WRITE = b"x" * 65536

def tick():
    global mark
    if ok and ok % CHUNK == 0:
        now = time.monotonic()
        chunks.append(CHUNK / (now - mark))
        mark = now

def one_request():
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((addr, port))
        if mode == "connect":
            s.recv(1)
            return True
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        got = 0
        while True:
            chunk = s.recv(1 << 17)
            if not chunk:
                return got >= RR_BODY
            got += len(chunk)
    except OSError:
        return False
    finally:
        s.close()

if mode == "bulk":
    conns = 1
    try:
        s = socket.create_connection((addr, port), timeout=5.0)
        while ok < n and time.monotonic() < end:
            s.sendall(WRITE)
            ok += 1
            tick()
        s.close()
    except OSError:
        failed += 1
else:
    for _ in range(n):
        if one_request():
            ok += 1
        else:
            failed += 1
        tick()
        if time.monotonic() >= end:
            break
    conns = ok + failed
print(json.dumps({"ok": ok, "failed": failed, "conns": conns, "t0": t0, "t1": time.monotonic(),
                  "best": max(chunks or [0])}))
""".replace("RR_BODY", str(RR_BODY))

# The container side of bulk and rr (connect uses lab/load.py's accept-and-close server): bulk reads each
# stream to its end, rr reads an HTTP request and answers 200 with RR_BODY bytes, then closes (the server
# closes first: TIME_WAIT stays on its side); a thread per connection, one process per CPU (SO_REUSEPORT).
# Each ends by itself when idle for a minute.
SERVER = r"""
import os, socket, sys, threading
procs, port, mode = int(sys.argv[1]), int(sys.argv[2]), MODE
ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % RR_BODY + b"x" * RR_BODY

def sink(c):
    buf = bytearray(1 << 18)
    while c.recv_into(buf):
        pass
    c.close()

def answer(c):
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = c.recv(4096)
        if not chunk:
            break
        got += chunk
    c.sendall(ANSWER)
    c.close()

for _ in range(procs - 1):
    if os.fork() == 0:
        break
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", port))
s.listen(4096)
s.settimeout(60)
os.write(1, b"ready\n")     # one write: the processes share the pipe, and print may write twice
try:
    while True:
        c, _ = s.accept()
        c.settimeout(10)
        threading.Thread(target=sink if mode == "bulk" else answer, args=(c,), daemon=True).start()
except socket.timeout:
    pass
""".replace("RR_BODY", str(RR_BODY))
WORKLOADS = {"connect": "connections", "bulk": "64 KB writes on one stream per client",
             "rr": "HTTP requests answered with %d KB" % (RR_BODY // 1024)}
WORKLOAD = "connect"

# The reference condition (t): bpftrace counting the 4 tracepoints the issue names, per probe (bpftrace's
# plain count(): a per-CPU map update per event), nothing else.
BPFTRACE_POINTS = ("tracepoint:skb:kfree_skb", "tracepoint:skb:consume_skb", "tracepoint:net:netif_receive_skb",
                   "tracepoint:fib:fib_table_lookup")
BPFTRACE_PROG = "%s { @[probe] = count(); }" % ",".join(BPFTRACE_POINTS)

DNATTRACE = "import sys; from dnattrace.cli import main; sys.argv[0] = 'dnattrace'; sys.exit(main())"
# The same under cProfile (--profile): the watch catches SIGINT itself, so the profile is written.
PROFILED = ("import sys, cProfile; from dnattrace.cli import main; out = sys.argv.pop(1); sys.argv[0] = 'dnattrace'; "
            "cProfile.run('main()', out)")


# Client processes per run (--clients): enough to keep both CPUs of the development VM busy through the
# DNAT path (one Python client made ~6,000 connections a second and left a CPU idle; see --clients).
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "3"))


_LEAD_S = {}


def client_lead(inst, clients):
    """How long before their common start the clients are launched: long enough for every client's
    Python to be up. 0.3 s + 50 ms a client on this VM; under emulation (a guest of scripts/vm/run) a
    Python takes seconds to start, so three times a measured start-up of one, if that is longer (else
    the clients start after the run's end and make one connection each)."""
    if clients not in _LEAD_S:
        t0 = time.monotonic()
        subprocess.run(["ip", "netns", "exec", inst.client_ns, sys.executable, "-c", "import json, socket, sys, time"],
                       check=True, timeout=120)
        _LEAD_S[clients] = max(0.3 + 0.05 * clients, 3 * (time.monotonic() - t0))
    return _LEAD_S[clients]


def run_client(inst, n, seconds, clients=None):
    """`clients` client processes (default CLIENTS) in the lab's client namespace, started together, each
    making at most n connections within `seconds`; their totals."""
    clients = clients or CLIENTS
    start = time.monotonic() + client_lead(inst, clients)     # every client's Python is up by then
    procs = [subprocess.Popen(["ip", "netns", "exec", inst.client_ns, sys.executable, "-c", CLIENT, str(n),
                               repr(start), str(seconds), inst.target_addr, str(BENCH_PORT), WORKLOAD],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(clients)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 60)
        if p.returncode != 0:
            raise SystemExit("bench: a client failed: %s" % err.strip()[-300:])
        outs.append(json.loads(out))
    return {"ok": sum(o["ok"] for o in outs), "failed": sum(o["failed"] for o in outs),
            "conns": sum(o["conns"] for o in outs),
            "seconds": max(o["t1"] for o in outs) - min(o["t0"] for o in outs),
            "best": sum(o["best"] for o in outs), "clients": clients}


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def attached(pid):
    """The watch has its BPF links and sits in its poll loop (blocked in epoll)."""
    links = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            links += os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:bpf_link"
        except OSError:
            pass
    with open("/proc/%d/wchan" % pid) as f:
        wchan = f.read()
    return links > 0 and "poll" in wchan


def prog_ids(pid):
    """The BPF programs a process holds (its program and link fds name them in fdinfo)."""
    ids = set()
    for fd in os.listdir("/proc/%d/fdinfo" % pid):
        try:
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return sorted(ids)


def prog_stats(ids):
    """name, run count and total run time of each program (kernel.bpf_stats_enabled must be on)."""
    out = []
    for i in ids:
        p = subprocess.run(["bpftool", "prog", "show", "id", str(i), "--json"], capture_output=True, text=True)
        if p.returncode == 0:
            d = json.loads(p.stdout)
            out.append({"name": d.get("name", "?"), "cnt": d.get("run_cnt", 0), "ns": d.get("run_time_ns", 0)})
    return out


def plan_sections():
    """The sections of the programs a watch attaches on this kernel outside the netfilter links (its probe
    plan, kernel/plan.py: tp_btf, raw_tp or tracepoint; fentry/fexit or kprobe/kretprobe), and whether
    its hooks come from netfilter links. The floor mirrors them, so that it is the floor of this kernel's
    watch and not of the development machine's (a 6.1 kernel has no netfilter links)."""
    from dnattrace.kernel import capabilities, loader, plan
    from dnattrace.watch import tracer
    caps = capabilities.probe()
    chosen, _ = tracer.choose(caps, hook_detail=False)
    links = plan.hooks_by_links(plan.choose(caps))
    obj = loader.BpfObject(tracer.OBJECT)
    try:
        sections = [obj.program(p).section for point, progs in chosen.items()
                    if not (links and point == "netfilter hooks") for p in progs]
    finally:
        obj.close()
    return sections, links


class FloorObject:
    """floor.bpf.o with only the empty programs at this kernel's watch points loaded (one per section:
    a function's trampoline takes a program once)."""

    def __init__(self):
        from dnattrace.kernel import loader
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        import bpfobjs      # the floor is a bench-only object, built into tests/bpf/build/, never shipped
        sections, self.links = plan_sections()
        self.obj = loader.BpfObject(bpfobjs.path("floor"))
        by_section = {prog.section: name for name, prog in self.obj.programs.items()}
        missing = sorted(set(sections) - set(by_section))
        if missing:
            raise SystemExit("bench: tests/bpf/floor.bpf.c has no empty program for %s" % ", ".join(missing))
        self.names = sorted({by_section[s] for s in sections})
        if self.links:
            self.obj.program("floor_nf").set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)
        self.obj.only(*self.names, *(["floor_nf"] if self.links else []))
        self.obj.load()

    def attach(self, *netns_paths):
        """The floor's links, at the points a watch attaches to: the same tracepoints and functions, and
        (where the hooks come from links) the first and last netfilter position of every hook in each
        namespace given (b: the host's; c: the host's and the container's)."""
        from dnattrace.kernel import plan
        links = [self.obj.program(p).attach() for p in self.names]
        if self.links:
            links += [self.obj.program("floor_nf").attach_netfilter(plan.HOOKS[hook], prio, netns_path=path)
                      for path in netns_paths for hook, _prog, prio in plan.positions()]
        return links

    def close(self):
        self.obj.close()


# Holds the floor attached until SIGINT (condition f).
FLOOR = r"""
import signal, sys
sys.path.insert(0, "scripts")
import bench_watch
links = bench_watch.FloorObject().attach(*sys.argv[1:])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("ready", len(links), flush=True)
signal.sigwait({signal.SIGINT})
"""


class Floor:
    """floor.bpf.o attached by a subprocess; stop() detaches (the process ends)."""

    def __init__(self, inst, container_too=False):
        paths = ["/run/netns/" + inst.host_ns] + (["/run/netns/" + inst.container_ns] if container_too else [])
        self.p = subprocess.Popen([sys.executable, "-c", FLOOR, *paths], stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        if not line or line[0] != "ready":
            self.kill()
            raise SystemExit("bench watch: the floor programs did not attach")
        self.cpu0 = cpu_seconds(self.p.pid)

    def stop(self, bpf_stats=False):
        self.p.send_signal(signal.SIGINT)
        self.p.wait(10)
        return {}

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Bpftrace:
    """The reference (t): bpftrace counting BPFTRACE_POINTS, attached until SIGINT."""

    def __init__(self):
        self.p = subprocess.Popen(["bpftrace", "-e", BPFTRACE_PROG], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        line = self.p.stdout.readline()     # "Attaching 4 probes...", printed once they are attached
        if not line.startswith("Attaching"):
            self.kill()
            raise SystemExit("bench watch: bpftrace did not attach: %s %s" % (line, self.p.stderr.read()[-300:]))
        time.sleep(ATTACHED_PAUSE_S)
        self.cpu0 = cpu_seconds(self.p.pid)

    def stop(self, bpf_stats=False):
        """SIGINT (bpftrace prints its counts and detaches); killed if it has not ended within 30 s (seen
        once under heavy load from other work)."""
        self.p.send_signal(signal.SIGINT)
        try:
            out, _ = self.p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"events": None}
        return {"events": sum(int(l.rsplit(":", 1)[1]) for l in out.splitlines() if l.startswith("@["))}

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Busy(Exception):
    pass


class Watch:
    """`dnattrace watch --json` as a subprocess, with its output in a file."""

    def __init__(self, inst, port, out_path, profile=None, tries=5, extra=()):
        self.out_path = out_path
        for attempt in range(tries):
            try:
                self._start(inst, port, profile, extra)
                return
            except Busy as e:
                # Another watch (someone's test, on a lab holding the same container address) has the
                # first/last netfilter priority in one of these namespaces: wait and try again.
                print("  (watch could not attach, retrying: %s)" % e, flush=True)
                time.sleep(2)
        raise SystemExit("bench watch: dnattrace watch could not attach after %d tries" % tries)

    def _start(self, inst, port, profile, extra):
        out_path = self.out_path
        self.out = open(out_path, "w")
        self.err = open(out_path + ".err", "w")
        t0 = time.monotonic()
        head = [sys.executable, "-c", PROFILED, profile] if profile else [sys.executable, "-c", DNATTRACE]
        # SIGINT back to its default: a shell without job control starts a background job (this benchmark
        # under nohup ... &) with SIGINT ignored, and the watch would inherit that and never stop
        self.p = subprocess.Popen(head + ["watch", "--json", "--netns", inst.host_ns, "--port", str(port), *extra],
                                  stdout=self.out, stderr=self.err,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = t0 + 30
        while True:
            if self.p.poll() is not None:
                self.out.close()
                self.err.close()
                err = open(out_path + ".err").read().strip()
                if "resource busy" in err:
                    raise Busy(err.splitlines()[-1])
                raise SystemExit("bench watch: dnattrace watch exited (%s): %s" % (self.p.returncode, err))
            try:
                if attached(self.p.pid):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise SystemExit("bench watch: dnattrace watch did not attach within 30 s")
            time.sleep(0.05)
        # Attached and polling: one more poll period so that every link is in place.
        time.sleep(ATTACHED_PAUSE_S)
        self.startup_s = time.monotonic() - t0
        self.cpu0 = cpu_seconds(self.p.pid)

    def stop(self, bpf_stats=False):
        """SIGINT (the user's Ctrl-C), wait for the summary; returns the figures."""
        cpu = cpu_seconds(self.p.pid) - self.cpu0
        hwm_kb = status_kb(self.p.pid, "VmHWM")
        progs = prog_stats(prog_ids(self.p.pid)) if bpf_stats else []
        self.p.send_signal(signal.SIGINT)
        try:
            _, status, usage = os.wait4(self.p.pid, 0)
            self.p.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            usage = None
        self.out.close()
        self.err.close()
        journeys, summary = 0, None
        with open(self.out_path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                d = json.loads(line)
                if d.get("type") == "summary":
                    summary = d
                elif d.get("type") == "journey":
                    journeys += 1
        if summary is None:
            raise SystemExit("bench watch: no summary from dnattrace watch (exit %s): %s"
                             % (self.p.returncode, open(self.out_path + ".err").read().strip()[-500:]))
        conns = summary["connections"]
        return {"cpu_s": cpu, "hwm_mb": max(hwm_kb, usage.ru_maxrss if usage else 0) / 1024.0,
                "lost": summary["lost_events"], "journeys": journeys, "connections": len(conns),
                "not_followed": summary.get("not_followed", 0),
                "answered": sum(1 for c in conns if c.get("replies")),
                "startup_s": self.startup_s, "progs": progs}

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.out, self.err):
            if not f.closed:
                f.close()


def machine_cpu():
    """(busy, steal) seconds of all CPUs so far (/proc/stat): busy is user, nice, system, irq and softirq
    (the connections' work, the tracer's probes and its process), steal what the hypervisor took."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def timed_run(inst, n, seconds):
    """One client run with its rate, the machine's CPU per connection and the steal time."""
    busy0, steal0 = machine_cpu()
    r = run_client(inst, n, seconds)
    busy1, steal1 = machine_cpu()
    r["rate"] = r["ok"] / r["seconds"]
    # CPU the whole machine spent per connection: unlike the rate, it does not move with the time the
    # hypervisor takes away (steal)
    r["cpu_us"] = 1e6 * (busy1 - busy0) / max(r["ok"], 1)
    r["steal_pct"] = 100.0 * (steal1 - steal0) / r["seconds"] / os.cpu_count()
    return r


def measure(inst, cond, n, seconds, tmp, profile=None, bpf_stats=False):
    # the previous condition's watch has exited; the kernel frees its programs and maps after that
    time.sleep(SETTLE_S)
    watch = None
    if cond == "b":
        watch = Watch(inst, OTHER_PORT, os.path.join(tmp, "watch-b.jsonl"))
    elif cond == "c":
        watch = Watch(inst, BENCH_PORT, os.path.join(tmp, "watch-c.jsonl"), profile=profile)
    elif cond == "f":
        watch = Floor(inst)
    elif cond == "g":
        watch = Floor(inst, container_too=True)
    elif cond == "e":
        watch = Watch(inst, BENCH_PORT, os.path.join(tmp, "watch-e.jsonl"), extra=("--max-rate", "100"))
    elif cond == "d":
        watch = Watch(inst, BENCH_PORT, os.path.join(tmp, "watch-d.jsonl"), extra=("--max-rate", "0"))
    elif cond == "t":
        watch = Bpftrace()
    else:
        time.sleep(ATTACHED_PAUSE_S)       # the same pause as after a watch attaches
    try:
        r = timed_run(inst, n, seconds)
        if watch:
            r["watch_cpu_pct"] = 100.0 * (cpu_seconds(watch.p.pid) - watch.cpu0) / r["seconds"]
            if cond not in "fgt":
                time.sleep(1.5)   # journeys still open finish (idle expiry) before the summary
            r.update(watch.stop(bpf_stats))
        return r
    finally:
        if watch:
            watch.kill()


def other_holders(inst):
    """Other namespaces holding the container address (other labs running): `watch` picks the container
    namespace by that address, so it may attach in one of those instead of this lab's."""
    names = [line.split()[0] for line in net.run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
    out = []
    for ns in names:
        if ns == inst.container_ns:
            continue
        p = net.run(["ip", "-n", ns, "-o", "-4", "addr", "show"], check=False)
        if " %s/" % inst.container_addr in p.stdout:
            out.append(ns)
    return out


def profile_pass(inst, n, seconds, tmp, rate_a):
    """One more b and c with kernel BPF run-time statistics on (not part of the ratios: the statistics
    cost time themselves), and the watch process of c under cProfile."""
    import pstats
    key = "kernel.bpf_stats_enabled"
    old = net.sysctl_get(key)
    prof = os.path.join(tmp, "watch.prof")
    try:
        net.sysctl_set(key, 1)
        for cond in "bc":
            r = measure(inst, cond, n, seconds, tmp, profile=prof if cond == "c" else None, bpf_stats=True)
            if not r["ok"]:
                print("\nprofile %s: no connection succeeded (%s); nothing to attribute" % (cond, conntrack_note()))
                continue
            per_conn_us = 1e6 / rate_a
            print("\nprofile %s: %d connections at %.0f conn/s (a: %.0f, %.0f us per connection); "
                  "watch CPU %.0f%%" % (cond, r["ok"], r["rate"], rate_a, per_conn_us, r["watch_cpu_pct"]))
            print("  %-16s %8s %10s %10s %12s" % ("BPF program", "progs", "runs/conn", "ns/run", "us/conn"))
            agg = {}
            for p in r["progs"]:
                a = agg.setdefault(p["name"], [0, 0, 0])
                a[0] += 1
                a[1] += p["cnt"]
                a[2] += p["ns"]
            total = 0.0
            for name, (k, cnt, ns) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
                us = ns / 1000.0 / max(r["ok"], 1)
                total += us
                print("  %-16s %8d %10.1f %10.0f %12.2f" % (name, k, cnt / max(r["ok"], 1), ns / max(cnt, 1), us))
            print("  %-16s %8s %10s %10s %12.2f  (= %.0f%% of a connection's time without tracer)"
                  % ("total", "", "", "", total, 100.0 * total / per_conn_us))
        print("\nwatch process (c) under cProfile, top functions by own time:")
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(15)
    finally:
        net.sysctl_set(key, old)


def conntrack_note():
    return ("the global net.netfilter.nf_conntrack_max is %s now; a lab conntrack-full instance lowers it "
            "to 256 while it is up, which makes this benchmark's connections fail" % net.sysctl_get(
                "net.netfilter.nf_conntrack_max"))


def verdict(ok):
    return "ok" if ok else "MISSED"


@contextlib.contextmanager
def bench_lab(prefix, warm_connections=500, seconds=5.0):
    """A lab `healthy` host set up for many short connections, with the benchmark's port published and
    its accept-and-close server running; everything is removed on the way out."""
    server = load.SERVER if WORKLOAD == "connect" else SERVER.replace("MODE", repr(WORKLOAD))
    with load.LoadHost(prefix, server=server) as host:
        inst = host.inst
        warm = run_client(inst, min(500, warm_connections), seconds)
        if warm["failed"] or not warm["ok"]:
            raise SystemExit("bench: the DNAT path does not work (warm-up: %s)" % warm)
        print("load average before: %.2f %.2f %.2f on %d CPUs (other work on the machine makes the rates noisy)"
              % (os.getloadavg() + (os.cpu_count(),)))
        print("lab %s (healthy): client %s -> %s:%d, DNAT to %s:%d"
              % (inst.name, inst.client_addr, inst.target_addr, BENCH_PORT, inst.container_addr, SERVER_PORT))
        yield inst


def main(argv=None):
    global CLIENTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 10000 connections are about 2 s here. Shorter runs overstate c: its rate cap admits a second's 20
    # connections at once, so a 0.4 s run (2000 connections) follows them at 50 a second.
    ap.add_argument("--connections", type=int, default=10 ** 6,
                    help="at most this many connections per client and run (default: --seconds decides)")
    ap.add_argument("--seconds", type=float, default=2.0, help="each run lasts this long (default 2)")
    ap.add_argument("--clients", type=int, default=CLIENTS,
                    help="client processes per run (default %d: the most this VM's two CPUs gain from)" % CLIENTS)
    ap.add_argument("--rounds", type=int, default=12, help="rounds of a and the --conds (default 12)")
    ap.add_argument("--seed", type=int, default=1, help="seed of each round's order of conditions (default 1)")
    ap.add_argument("--conds", default="bcfgt",
                    help="conditions besides a, in each round: b, c (the targets), t (bpftrace, the reference), "
                         "f and g (empty programs at b's and c's points: their floors), e, d (default bcfgt)")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="connect",
                    help="connect: short connections (default); bulk: one TCP stream per client, throughput; "
                         "rr: HTTP requests with a %d KB answer, a connection each" % (RR_BODY // 1024))
    ap.add_argument("--profile", action="store_true",
                    help="afterwards, one more b and c with BPF run-time statistics and cProfile on the watch")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench watch: needs root (namespaces, BPF)")

    global WORKLOAD, TARGETS
    CLIENTS, WORKLOAD = args.clients, args.workload
    TARGETS = TARGETS_BY_WORKLOAD[WORKLOAD]
    conds = "a" + "".join(c for c in "bcedfgt" if c in args.conds)
    results = {c: [] for c in conds}
    with bench_lab("bw", args.connections, args.seconds) as inst:
        tmp = "/tmp/%s" % inst.name
        os.makedirs(tmp)
        try:
            print("workload %s (a unit: one of the %s); %d client processes, %g s per run (or %d units each), "
                  "%d rounds; conditions: %s"
                  % (WORKLOAD, WORKLOADS[WORKLOAD], CLIENTS, args.seconds, args.connections, args.rounds,
                     "; ".join("%s = %s" % (c, LABELS[c]) for c in conds)))
            if "t" in conds:
                print("t runs: bpftrace -e '%s'" % BPFTRACE_PROG)
            others = other_holders(inst)
            if others:
                print("note: %d other namespaces hold %s too (%s): watch may take one of them as the "
                      "container's" % (len(others), inst.container_addr, ", ".join(others)))
            print("%-5s %-4s %8s %6s %8s %8s %6s %9s %8s %6s %10s %9s" % (
                "round", "cond", "conns", "fail", "conn/s", "us CPU/c", "steal%", "watchCPU%", "RSS MB", "lost",
                "followed", "startup"))
            shuffle = random.Random(args.seed)
            for rnd in range(1, args.rounds + 1):
                # a new order each round: a condition's place in the round must not become part of its figure
                for cond in shuffle.sample(conds, len(conds)):
                    r = measure(inst, cond, args.connections, args.seconds, tmp)
                    results[cond].append(r)
                    print("%-5d %-4s %8d %6d %8.0f %8.1f %6.1f %9s %8s %6s %10s %9s" % (
                        rnd, cond, r["ok"], r["failed"], r["rate"], r["cpu_us"], r["steal_pct"],
                        "%.0f" % r["watch_cpu_pct"] if "watch_cpu_pct" in r else "-",
                        "%.1f" % r["hwm_mb"] if "hwm_mb" in r else "-",
                        r.get("lost", "-"),
                        "%d/%d" % (r["answered"], r["conns"]) if cond in "cde" else "-",
                        "%.1fs" % r["startup_s"] if "startup_s" in r else "-"), flush=True)
            if args.profile:
                profile_pass(inst, args.connections, args.seconds, tmp,
                             statistics.median(r["rate"] for r in results["a"]))
        finally:
            for f in sorted(os.listdir(tmp)):
                os.unlink(os.path.join(tmp, f))
            os.rmdir(tmp)

    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    return report(results, conds)


def round_ratios(results, cond, key="rate", per_cost=False):
    """Each round's figure of cond over the same round's a (a's over cond's for a cost, so that lower is
    worse either way)."""
    return [(a[key] / r[key]) if per_cost else (r[key] / a[key]) for r, a in zip(results[cond], results["a"])]


def paired(results, cond, key="rate", per_cost=False):
    """round_ratios' (median, lowest, highest)."""
    ratios = round_ratios(results, cond, key, per_cost)
    return statistics.median(ratios), min(ratios), max(ratios)


def std_error(ratios) -> float:
    """The standard error of the rounds' mean ratio (0 with a single round)."""
    return statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0


def ratio_line(name, ratios) -> str:
    return "%s = %.3f (rounds %.3f-%.3f, mean %.3f, standard error %.3f, %d rounds)" % (
        name, statistics.median(ratios), min(ratios), max(ratios), statistics.mean(ratios), std_error(ratios),
        len(ratios))


def report(results, conds):
    """The figures and the verdict on each target; the exit status (1 when one is missed)."""
    watched = [c for c in conds if c != "a"]
    failed = sum(r["failed"] for c in conds for r in results[c])
    if failed:
        print("WARNING: %d connects failed during the runs: the rates are not comparable (%s)"
              % (failed, conntrack_note()))
    print()
    print("median conn/s: " + ", ".join("%s (%s) %.0f" % (c, LABELS[c], statistics.median(r["rate"] for r in results[c]))
                                       for c in conds))
    print("median machine CPU per connection (us): " + ", ".join(
        "%s %.1f" % (c, statistics.median(r["cpu_us"] for r in results[c])) for c in conds))
    print("median steal (share of all CPUs): " + ", ".join(
        "%s %.1f%%" % (c, statistics.median(r["steal_pct"] for r in results[c])) for c in conds))
    met = not failed
    for c in watched:
        print("%s: best 200-connection stretch, %s's rate / a's = %.3f (rounds %.3f-%.3f): interference only "
              "ever slows a stretch down, so the best ones compare the conditions with less noise"
              % ((c, c) + paired(results, c, "best")))
    for c in watched:
        print("%s: a's CPU per connection / %s's = %.3f (rounds %.3f-%.3f): the rate ratio if CPU were all "
              "that limits it" % ((c, c) + paired(results, c, "cpu_us", per_cost=True)))
    for c in watched:
        med = paired(results, c)[0]
        target = TARGETS.get(c)
        line = ratio_line("%s/a" % c, round_ratios(results, c))
        if target:
            line += " (target >= %.2f): %s" % (target, verdict(med >= target))
            met = met and med >= target
        print(line)
    if "t" in conds:
        for c in (c for c in watched if c != "t"):
            ratios = [r["rate"] / t["rate"] for r, t in zip(results[c], results["t"])]
            line = "%s: %s against bpftrace's bare counter in the same rounds (> 1: %s is ahead)" % (
                ratio_line("%s/t" % c, ratios), LABELS[c], c)
            if c in TARGETS:
                line += " (target >= 1): %s" % verdict(statistics.median(ratios) >= 1)
                met = met and statistics.median(ratios) >= 1
            print(line)
    if "c" in conds:
        lost = sum(r["lost"] for c in "bc" if c in conds for r in results[c])
        print("lost events (b and c, all runs) = %d (target 0): %s" % (lost, verdict(lost == 0)))
        made = sum(r["conns"] for r in results["c"])
        followed = sum(r["answered"] for r in results["c"])
        counted = sum(r["not_followed"] for r in results["c"])
        ok = followed + counted >= made
        print("connections in c: %d made, %d followed in full (with their SYN-ACK), %d counted as not followed "
              "(over --max-rate): %s" % (made, followed, counted, verdict(ok)))
        met = met and lost == 0 and ok
    if "d" in conds:
        made = sum(r["conns"] for r in results["d"])
        followed = sum(r["answered"] for r in results["d"])
        lost = sum(r["lost"] for r in results["d"])
        print("d (--max-rate 0): %d of %d connections followed in full, %d events lost; peak RSS %.1f MB (its "
              "4 MB ring, and the journeys it cannot keep up with)"
              % (followed, made, lost, max(r["hwm_mb"] for r in results["d"])))
    if watched:
        print("watch CPU (median, share of one core): " + ", ".join(
            "%s %.0f%%" % (c, statistics.median(r["watch_cpu_pct"] for r in results[c])) for c in watched))
    targeted = [c for c in watched if c in TARGETS]
    if targeted:
        rss = max(r["hwm_mb"] for c in targeted for r in results[c])
        print("watch peak RSS = %.1f MB (target < %.0f MB): %s" % (rss, TARGET_RSS_MB, verdict(rss < TARGET_RSS_MB)))
        met = met and rss < TARGET_RSS_MB
    else:
        print("no target among these conditions (the targets are b and c)")
    if targeted:
        print("all targets met" if met else "TARGETS MISSED (see above)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
