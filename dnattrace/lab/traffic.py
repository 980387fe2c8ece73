"""Client traffic for lab instances, run inside the client namespace (a short python3 child under
`ip netns exec`, since sockets must be created in that namespace). Every loop is bounded in count and time.
"""
from __future__ import annotations

import dataclasses
import json
import sys

from dnattrace.netns import build as net

MAX_ATTEMPTS, MAX_SYNS = 100, 10000
UDP_SPORT = 40000            # UDP requests always come from this port: one conntrack flow, as a VoIP/syslog client

UDP_SEND_ONCE = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[3])))
s.sendto(b"dnattrace lab", (sys.argv[1], int(sys.argv[2])))
'''

# Runs in the client namespace: one datagram per attempt from UDP_SPORT, answered by an echo.
_UDP_REQUEST = r'''
import json, socket, sys, time
addr, port, attempts, timeout, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
out = []
for _ in range(attempts):
    t0 = time.monotonic(); reason = "ok"; status = None
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("", sport))
        s.sendto(b"dnattrace lab", (addr, port))
        data, _ = s.recvfrom(256)
        status = data.decode("ascii", "replace")
        if data != b"dnattrace lab":
            reason = "no-response"
    except socket.timeout:
        reason = "timeout"
    except OSError as e:
        reason = "error: %s" % e
    finally:
        s.close()
    out.append({"ok": reason == "ok", "reason": reason, "status": status,
                "seconds": round(time.monotonic() - t0, 3)})
print(json.dumps(out))
'''

# Runs in the client namespace. Reasons: ok, timeout, refused, unreachable, reset, no-response, stalled (the
# headers came, the body did not: only for a path other than "/", whose whole body is read), error.
_REQUEST = r'''
import errno, json, socket, sys, time
addr, port, attempts, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
path = sys.argv[5] if len(sys.argv) > 5 else "/"
out = []
for _ in range(attempts):
    t0 = time.monotonic(); reason = "ok"; status = None
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET); s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(b"GET %s HTTP/1.0\r\nHost: lab\r\n\r\n" % path.encode())
        data = s.recv(256)
        status = data.split(b"\r\n", 1)[0].decode("ascii", "replace") if data else None
        if not (status or "").startswith("HTTP/"):
            reason = "no-response"
        elif path != "/":   # a large response: read all of it (bounded), the body must be complete
            head, _, body = data.partition(b"\r\n\r\n")
            want = int(([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                        or [b"0"])[0])
            got = len(body)
            while got < want and time.monotonic() - t0 < timeout:
                s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
            if got < want:
                reason = "stalled"
    except socket.timeout:
        reason = "stalled" if status else "timeout"
    except ConnectionRefusedError:
        reason = "refused"
    except ConnectionResetError:
        reason = "reset"
    except OSError as e:
        reason = "unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error: %s" % e
    finally:
        s.close()
    out.append({"ok": reason == "ok", "reason": reason, "status": status,
                "seconds": round(time.monotonic() - t0, 3)})
print(json.dumps(out))
'''

_BURST = r'''
import json, select, socket, sys, time
addr, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET); s.setblocking(False)
    s.connect_ex((addr, port)); socks.append(s)
deadline = time.monotonic() + timeout
pending = set(socks); done = 0
while pending and time.monotonic() < deadline:
    _, w, _ = select.select([], list(pending)[:1000], [], max(0.0, deadline - time.monotonic()))
    for s in w:
        pending.discard(s)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            done += 1
for s in socks:
    s.close()
print(json.dumps({"sent": count, "connected": done, "pending": len(pending)}))
'''


@dataclasses.dataclass
class TrafficResult:
    ok: bool                 # every attempt got an HTTP answer
    reason: str              # "ok", or the first failed attempt's reason (timeout, refused, ...)
    attempts: list           # one dict per attempt: ok, reason, status, seconds

    def to_dict(self):
        return dataclasses.asdict(self)


def _client(inst, script, *args, timeout):
    p = net.run([sys.executable, "-c", script, inst.target_addr, str(inst.target_port)] + [str(a) for a in args],
                netns=inst.client_ns, timeout=timeout)
    return json.loads(p.stdout)


def request_path(inst):
    """What the lab's client fetches: the large response of a scenario that serves one, else "/"."""
    from dnattrace.lab import scenarios, topology
    sc = scenarios.BY_ID.get(inst.scenario)
    return topology.BIG_PATH if sc is not None and sc.large_response else "/"


def request(inst, attempts=1, timeout=2.0):
    """`attempts` sequential TCP connects + HTTP GET to the instance's target (UDP instances: a datagram
    and its echo), each bounded by `timeout`."""
    attempts = max(1, min(int(attempts), MAX_ATTEMPTS))
    timeout = max(0.05, min(float(timeout), 30.0))
    if inst.proto == "udp":
        out = _client(inst, _UDP_REQUEST, attempts, timeout, UDP_SPORT, timeout=attempts * (timeout + 1) + 10)
    else:
        out = _client(inst, _REQUEST, attempts, timeout, request_path(inst),
                      timeout=attempts * (timeout + 1) + 10)
    failed = [a for a in out if not a["ok"]]
    return TrafficResult(ok=not failed, reason=failed[0]["reason"] if failed else "ok", attempts=out)


def syn_burst(inst, count=10, timeout=0.2):
    """`count` parallel non-blocking connects (one SYN each, more if still pending after 1 s); all are
    closed after `timeout` seconds. Returns {"sent", "connected", "pending"}."""
    count = max(1, min(int(count), MAX_SYNS))
    timeout = max(0.01, min(float(timeout), 10.0))
    return _client(inst, _BURST, count, timeout, timeout=timeout + 30)
