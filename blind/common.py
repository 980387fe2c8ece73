"""Building blocks the blind scenarios share: a Docker-like host made of network namespaces (an outside
client, a host that DNATs a published port to a "container" on a bridge), a small server in the
container, bounded client attempts, and a teardown that leaves nothing behind.

Deliberately independent of dnattrace (no import of it): the benchmark must not share the product's
assumptions about what a host looks like.

Layout (names start with the prefix the harness gives, at most 8 characters, so that interface names
stay within the kernel's 15):
    PREFIX-client  veth PREFIXc  198.51.100.2/24  2001:db8:51::2/64   default via the host
    PREFIX-host    veth PREFIXo  198.51.100.1/24  2001:db8:51::1/64   (the outside interface)
                   bridge PREFIXbr 172.30.0.1/16  2001:db8:30::1/64, port PREFIXp
    PREFIX-ctr     eth0          172.30.0.2/16    2001:db8:30::2/64   default via the bridge
"""
import os
import subprocess
import sys
import time

CLIENT4, HOST4, CTR4, BR4 = "198.51.100.2", "198.51.100.1", "172.30.0.2", "172.30.0.1"
CLIENT6, HOST6, CTR6, BR6 = "2001:db8:51::2", "2001:db8:51::1", "2001:db8:30::2", "2001:db8:30::1"
PORT, CTR_PORT = 8080, 80
BIG = 200_000            # bytes of the large response (/big): enough to need full-sized segments

HTTP_SERVER = r"""
import http.server, socketserver, socket, sys
BIG = b"x" * int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = BIG if self.path == "/big" else b"hello from the container\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6; daemon_threads = True; allow_reuse_address = True
S(("::", int(sys.argv[1])), H).serve_forever()
"""

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048); s.sendto(b"echo " + data, peer)
"""

TCP_CLIENT = r"""
import socket, sys
addr, port, path, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
src = (sys.argv[6], 0) if len(sys.argv) > 6 else None
s = socket.create_connection((addr, port), timeout=float(sys.argv[5]), source_address=src)
s.sendall(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: x\r\n\r\n")
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    got += chunk
body = got.split(b"\r\n\r\n", 1)[-1]
sys.exit(0 if got.startswith(b"HTTP/1.0 200") and len(body) >= want else 1)
"""

UDP_CLIENT = r"""
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3])); s.connect((addr, port)); s.send(b"ping")
sys.exit(0 if s.recv(2048) == b"echo ping" else 1)
"""


def sh(cmd, ns=None, check=True, timeout=20):
    """Run a shell command (in namespace ns); raise with its stderr when check and it fails."""
    argv = ["ip", "netns", "exec", ns, "sh", "-c", cmd] if ns else ["sh", "-c", cmd]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s%s: %s" % ("[%s] " % ns if ns else "", cmd, p.stderr.strip() or p.returncode))
    return p.stdout


def names(prefix):
    """The namespace and interface names of one instance."""
    return {"client": prefix + "-client", "host": prefix + "-host", "ctr": prefix + "-ctr",
            "cveth": prefix + "c", "out": prefix + "o", "br": prefix + "br", "port": prefix + "p"}


def netns_list():
    return [l.split()[0] for l in sh("ip netns list").splitlines() if l.strip()]


def add_ns(ctx, name):
    """Create a namespace and record it before anything else is made in it (teardown reads ctx)."""
    ctx.setdefault("namespaces", []).append(name)
    sh("ip netns add %s" % name)
    sh("ip link set lo up", ns=name)
    # a new namespace copies IPv4's conf/all and conf/default from the root namespace
    # (net.core.devconf_inherit_init_net=0): pin what would change the scenarios' paths
    sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0", ns=name)


def docker_host(prefix, server="http", families=(4, 6), ctx=None):
    """Client, host and container namespaces wired as above, forwarding on, the published port DNATed
    (iptables and ip6tables, nat PREROUTING, as Docker does), the server started; the healthy base that a
    scenario then breaks. Returns ctx (host_netns, port, names, addresses)."""
    n = names(prefix)
    ctx = ctx if ctx is not None else {}
    ctx.update(n=n, host_netns=n["host"], port=PORT, proto="udp" if server == "udp" else "tcp", pids=[])
    for ns in (n["client"], n["host"], n["ctr"]):
        add_ns(ctx, ns)
    sh("ip link add %s netns %s type veth peer name %s netns %s" % (n["cveth"], n["client"], n["out"], n["host"]))
    sh("ip link add %s netns %s type veth peer name eth0 netns %s" % (n["port"], n["host"], n["ctr"]))
    h, c, k = n["host"], n["client"], n["ctr"]
    sh("ip link add %s type bridge && ip link set %s master %s" % (n["br"], n["port"], n["br"]), ns=h)
    sh("ip addr add %s/24 dev %s && ip addr add %s/64 dev %s nodad && ip link set %s up"
       % (CLIENT4, n["cveth"], CLIENT6, n["cveth"], n["cveth"]), ns=c)
    sh("ip route add default via %s && ip -6 route add default via %s" % (HOST4, HOST6), ns=c)
    sh("ip addr add %s/24 dev %s && ip addr add %s/64 dev %s nodad && ip link set %s up"
       % (HOST4, n["out"], HOST6, n["out"], n["out"]), ns=h)
    sh("ip addr add %s/16 dev %s && ip addr add %s/64 dev %s nodad && ip link set %s up && ip link set %s up"
       % (BR4, n["br"], BR6, n["br"], n["br"], n["port"]), ns=h)
    sh("ip addr add %s/16 dev eth0 && ip addr add %s/64 dev eth0 nodad && ip link set eth0 up"
       % (CTR4, CTR6), ns=k)
    sh("ip route add default via %s && ip -6 route add default via %s" % (BR4, BR6), ns=k)
    sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1", ns=h)
    proto = ctx["proto"]
    if 4 in families:
        sh("iptables -t nat -A PREROUTING -p %s --dport %d -j DNAT --to-destination %s:%d"
           % (proto, PORT, CTR4, CTR_PORT), ns=h)
    if 6 in families:
        sh("ip6tables -t nat -A PREROUTING -p %s --dport %d -j DNAT --to-destination [%s]:%d"
           % (proto, PORT, CTR6, CTR_PORT), ns=h)
    start_server(ctx, server)
    return ctx


def start_server(ctx, kind):
    """The container's server (HTTP or UDP echo on CTR_PORT, both families); wait until it listens."""
    code = HTTP_SERVER if kind == "http" else UDP_ECHO
    p = subprocess.Popen(["ip", "netns", "exec", ctx["n"]["ctr"], sys.executable, "-c", code, str(CTR_PORT),
                          str(BIG)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    ctx["pids"].append(p.pid)
    flag = "-u" if kind == "udp" else "-t"
    for _ in range(50):
        if ":%d " % CTR_PORT in sh("ss -Hln %s" % flag, ns=ctx["n"]["ctr"], check=False):
            return
        time.sleep(0.1)
    raise RuntimeError("the container's server did not start")


def client_addr(family):
    return HOST4 if family == 4 else HOST6


def attempt_tcp(ctx, family, path="/", want=1, timeout=2.5, src=None):
    """One bounded HTTP GET from the client namespace to the published port (from address src if given);
    True = the full answer (at least want bytes of body)."""
    args = [TCP_CLIENT, client_addr(family), str(ctx["port"]), path, str(want), str(timeout)]
    return _client(ctx, args + ([src] if src else []), timeout)


def attempt_udp(ctx, family, timeout=2.5):
    """One bounded UDP request/echo from the client namespace to the published port."""
    return _client(ctx, [UDP_CLIENT, client_addr(family), str(ctx["port"]), str(timeout)], timeout)


def _client(ctx, args, timeout):
    try:
        p = subprocess.run(["ip", "netns", "exec", ctx["n"]["client"], sys.executable, "-c"] + args,
                           capture_output=True, timeout=timeout + 0.5)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0


def teardown(ctx):
    """Kill what runs in the namespaces this instance made, then delete them; idempotent, safe after a
    partial build (only what ctx recorded is touched)."""
    for ns in ctx.get("namespaces", []):
        if not os.path.exists("/run/netns/" + ns):
            continue
        for pid in sh("ip netns pids %s" % ns, check=False).split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip netns del %s" % ns, check=False)
    for pid in ctx.get("pids", []):
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
