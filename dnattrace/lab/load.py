"""A busy published port: a lab `healthy` host with a second port published to an accept-and-close server,
and bounded connect/close clients in the lab's client namespace at thousands of connections a second.
What the load tests and `scripts/bench soak` / `scripts/bench watch` run watch and diagnose against.

    with load.LoadHost(fail_every=10) as h:           # 1 connection in 10 DNATed to an address nobody holds
        r = h.run(seconds=5)                          # {"ok", "failed", "errors", "made", "seconds", "rate"}
        clients = h.start(seconds=30); ...; r = clients.wait()

The lab's own server (busybox httpd, a fork per connection) cannot keep up with thousands a second, so
the container side is a trivial accept-and-close server on SERVER_PORT (one process per CPU), published
as PORT by two rules laid out as Docker's (DNAT in nat/DOCKER, ACCEPT in filter/DOCKER). The failing
share is one more DNAT rule before it (`-m statistic --mode nth`) to UNHELD, an address of the bridge's
subnet that nothing holds, accepted in FORWARD like the real one: those SYNs die on the neighbour's
failed resolution, as a backend gone away would make them. Everything is removed on the way out (the
lab instance, its rules, the processes by their group).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from dnattrace.lab import manage
from dnattrace.netns import build as net

PORT, SERVER_PORT = 8081, 81
# In the lab's bridge subnet (topology.SUBNET), held by no namespace: the failing share's target.
UNHELD = "172.31.0.250"
# Bounds of every client run, whatever is asked: a test or a benchmark cannot make an endless loop.
MAX_SECONDS, MAX_COUNT = 3600.0, 10 ** 8
# How long the host's conntrack keeps a closed connection's entry (seconds; see up()).
CT_CLOSED_S = 5

# Accept and close, nothing else: the container side costs as little as possible. One process per CPU on
# one port (SO_REUSEPORT). Each ends by itself when idle for a minute (bounded even if its parent is
# killed hard).
SERVER = r"""
import os, socket, sys
procs, port = int(sys.argv[1]), int(sys.argv[2])
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
        c.close()
except socket.timeout:
    pass
"""

# One client: up to `inflight` non-blocking connects at a time (epoll), until `count` connections were
# made or `seconds` passed, each bounded by `timeout`. A connection succeeds when the server's close
# arrives after the handshake. close: "wait" (close after the server's, so TIME_WAIT stays on the server's
# side), "rst" (SO_LINGER 0: the client's close is a RST, as impatient clients and load balancers do).
# Starts at `start` (CLOCK_MONOTONIC, shared by every process) so that several clients run together.
CLIENT = r"""
import errno, json, select, socket, struct, sys, time
count, start, seconds, addr, port, inflight, timeout, close = (int(sys.argv[1]), float(sys.argv[2]),
    float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), sys.argv[8])
LINGER0 = struct.pack("ii", 1, 0)
ep = select.epoll()
live = {}
ok = failed = made = 0
errors = {}
def done(fd, err):
    global ok, failed
    s = live.pop(fd)[0]
    ep.unregister(fd)
    if err:
        failed += 1
        errors[err] = errors.get(err, 0) + 1
    else:
        ok += 1
    if close == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    s.close()
while time.monotonic() < start:
    time.sleep(0.001)
t0 = time.monotonic()
end = t0 + seconds
while True:
    now = time.monotonic()
    while made < count and now < end and len(live) < inflight:
        s = socket.socket()
        s.setblocking(False)
        rc = s.connect_ex((addr, port))
        made += 1
        if rc not in (0, errno.EINPROGRESS):     # no SYN sent (no free local port, say): failed at once
            failed += 1
            errors[errno.errorcode.get(rc, str(rc))] = errors.get(errno.errorcode.get(rc, str(rc)), 0) + 1
            s.close()
            continue
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLRDHUP)
        live[s.fileno()] = [s, now, False]
    if not live and (made >= count or now >= end):
        break
    for fd, ev in ep.poll(0.01):
        s, _, connected = live[fd]
        if not connected:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                done(fd, errno.errorcode.get(err, str(err)))
                continue
            live[fd][2] = True
            ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
        if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
            done(fd, None)
    now = time.monotonic()
    for fd in [fd for fd, v in live.items() if now - v[1] > timeout]:
        done(fd, "timeout" if not live[fd][2] else "no-close")
print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "made": made, "seconds": time.monotonic() - t0}))
"""


def _hwm_mb(pid) -> float:
    """A process's peak resident memory (VmHWM) in MB; 0 once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):
        return 0.0


class Clients:
    """Client processes running; wait() gives their totals (rate: successful connections a second)."""

    def __init__(self, procs):
        self.procs = procs

    def wait(self, timeout: float = MAX_SECONDS + 60) -> dict:
        total = {"ok": 0, "failed": 0, "made": 0, "errors": {}, "seconds": 0.0}
        for p in self.procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError("load client failed (%s): %s" % (p.returncode, err.strip()[-300:]))
            r = json.loads(out)
            for k in ("ok", "failed", "made"):
                total[k] += r[k]
            for k, v in r["errors"].items():
                total["errors"][k] = total["errors"].get(k, 0) + v
            total["seconds"] = max(total["seconds"], r["seconds"])
        total["rate"] = total["ok"] / total["seconds"] if total["seconds"] else 0.0
        return total

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


class LoadHost:
    """A lab `healthy` host made busy-ready (see the module's docstring); a context manager."""

    def __init__(self, prefix: str = "ld", fail_every: int = 0, server: str = SERVER):
        """server: the container side's program (argv: processes, port; prints "ready" once per process),
        accept-and-close unless a benchmark brings its own workload's."""
        self.prefix, self.fail_every, self.server = prefix, fail_every, server
        self.inst = None
        self._server: Optional[subprocess.Popen] = None
        self._rules: list[list[str]] = []
        self._lead: Optional[float] = None

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    @property
    def host_ns(self):
        return self.inst.host_ns

    @property
    def target_addr(self):
        return self.inst.target_addr

    def up(self):
        self.inst = manage.up("healthy", prefix=net.unique(self.prefix), docker=False)
        inst = self.inst
        # Many short connections from one client address: a wide port range and TIME_WAIT reuse, in the
        # lab's own client namespace (gone with it).
        net.sysctl_set("net.ipv4.ip_local_port_range", "1024 65000", inst.client_ns)
        net.sysctl_set("net.ipv4.tcp_tw_reuse", 1, inst.client_ns)
        # conntrack entries of closed connections go after CT_CLOSED_S, not two minutes: nf_conntrack_max
        # is global (shared with every other lab on the machine), and 15k connections a second for two
        # minutes would fill it. Not at once: a late packet (a retransmitted FIN, the client's last ACK)
        # must still find its entry, or it goes un-NATed and is answered with a RST, which a real host's
        # traffic does not do.
        for state in ("time_wait", "close", "last_ack", "fin_wait", "close_wait"):
            net.sysctl_set("net.netfilter.nf_conntrack_tcp_timeout_%s" % state, CT_CLOSED_S, inst.host_ns)
        net.sysctl_set("net.ipv4.tcp_max_tw_buckets", 0, inst.container_ns)
        self._publish(inst.container_addr, append=True)
        if self.fail_every:
            self._publish(UNHELD, append=False,
                          match=["-m", "statistic", "--mode", "nth", "--every", str(self.fail_every), "--packet", "0"])
        self._server = self._start_server(inst.container_ns)
        return self

    def _publish(self, addr, append, match=()):
        """PORT DNATed to addr:SERVER_PORT and accepted in FORWARD, as Docker lays a published port out;
        append=False puts the DNAT first (a share of the connections taken before the real rule)."""
        inst = self.inst
        dnat = ["-t", "nat", "-A" if append else "-I", "DOCKER", *([] if append else ["1"]), "!", "-i", inst.bridge,
                "-p", "tcp", "-m", "tcp", "--dport", str(PORT), *match, "-j", "DNAT",
                "--to-destination", "%s:%d" % (addr, SERVER_PORT)]
        accept = ["-t", "filter", "-A", "DOCKER", "-d", addr + "/32", "!", "-i", inst.bridge, "-o", inst.bridge,
                  "-p", "tcp", "-m", "tcp", "--dport", str(SERVER_PORT), "-j", "ACCEPT"]
        for rule in (dnat, accept):
            net.run(["iptables", *rule], netns=inst.host_ns)
            self._rules.append(rule)

    def _start_server(self, ns, procs=None) -> subprocess.Popen:
        procs = procs or os.cpu_count()
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", self.server, str(procs), str(SERVER_PORT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for _ in range(procs):
            if p.stdout.readline().strip() != "ready":
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise RuntimeError("the accept-and-close server did not start in %s: %s" % (ns, p.stderr.read()[-300:]))
        return p

    def down(self):
        if self._server is not None:
            try:
                os.killpg(self._server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._server.wait()
            self._server = None
        if self.inst is not None:
            manage.down(self.inst.name)      # the rules go with the host's namespace
            self.inst = None

    def _client_lead(self) -> float:
        """How long before their common start the clients are launched: every client's Python is up by
        then (0.3 s here; three times a measured start-up where Python starts slowly, under emulation)."""
        if self._lead is None:
            t0 = time.monotonic()
            subprocess.run(["ip", "netns", "exec", self.inst.client_ns, sys.executable, "-c",
                            "import errno, json, select, socket, struct, sys, time"], check=True, timeout=120)
            self._lead = max(0.3, 3 * (time.monotonic() - t0))
        return self._lead

    def start(self, seconds: float, count: int = MAX_COUNT, clients: int = 2, inflight: int = 64,
              timeout: float = 1.0, close: str = "wait", port: int = PORT) -> Clients:
        """`clients` client processes started together, each making at most `count` connections within
        `seconds` (both capped: MAX_COUNT, MAX_SECONDS), at most `inflight` at a time, each given up after
        `timeout` seconds."""
        if close not in ("wait", "rst"):
            raise ValueError("close is 'wait' or 'rst', not %r" % close)
        seconds, count = min(float(seconds), MAX_SECONDS), min(int(count), MAX_COUNT)
        start = time.monotonic() + self._client_lead()
        args = [str(count), repr(start), str(seconds), self.inst.target_addr, str(port), str(inflight), str(timeout), close]
        return Clients([subprocess.Popen(["ip", "netns", "exec", self.inst.client_ns, sys.executable, "-c", CLIENT, *args],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                        for _ in range(clients)])

    def watch(self, rate: int, seconds: float, out_path: str, clients: int = 2, settle: float = 1.5) -> dict:
        """`dnattrace watch --json --max-rate RATE` on this host while `clients` clients run for `seconds`;
        SIGINT (the user's Ctrl-C) `settle` seconds after they are done. {"exit", "stderr", "peak_mb"
        (VmHWM, sampled twice a second and at the end), "summary" (watch's JSON summary), "clients"}."""
        with open(out_path, "w") as f:
            p = subprocess.Popen([sys.executable, "-m", "dnattrace.cli", "watch", "--json", "--netns", self.host_ns,
                                  "--port", str(PORT), "--max-rate", str(rate)], stdout=f, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 60
                while os.path.getsize(out_path) == 0 and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)        # the start record: every probe is attached
                load = self.start(seconds=seconds, clients=clients, timeout=3.0)
                peak = 0.0
                while any(c.poll() is None for c in load.procs):
                    peak = max(peak, _hwm_mb(p.pid))
                    time.sleep(0.5)
                totals = load.wait()
                time.sleep(settle)          # the last connections' replies read and finished
                peak = max(peak, _hwm_mb(p.pid))
                p.send_signal(signal.SIGINT)
                _, err = p.communicate(timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        with open(out_path) as f:
            last = f.read().rstrip("\n").rsplit("\n", 1)[-1]
        summary = json.loads(last) if last.startswith("{") else {}
        return {"exit": p.returncode, "stderr": err, "peak_mb": peak, "summary": summary, "clients": totals}

    def run(self, seconds: float, **kw) -> dict:
        """start() and wait(): the clients' totals."""
        clients = self.start(seconds, **kw)
        try:
            return clients.wait()
        finally:
            clients.kill()
