"""Kernel tests for `dnattrace drops`: real BPF, real namespaces, real packets.

The topology is the reference fault in miniature: a client namespace and a "host" namespace joined by a
veth; the host DNATs TCP :18080 to 172.31.0.2:80 behind a veth and has IPv4 forwarding off, so
each SYN must die in ip_error with IP_INADDRERRORS (on a kernel without drop reasons: "unknown", ip_error
has two). UDP to a closed port dies with NO_SOCKET (inferred from the site there).
"""
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import slow
from dnattrace.drops import counter as engine
from dnattrace.kernel import kallsyms
from dnattrace.netns import names as nsnames
from dnattrace.netns import build as net
from dnattrace.netns.enter import entered

pytestmark = pytest.mark.kernel

CLIENT_IP, HOST_IP = "198.51.100.2", "198.51.100.1"
DNAT_PORT, CLOSED_UDP_PORT = 18080, 19999
N = 7
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lab:
    def __init__(self, client, host):
        self.client, self.host = client, host
        self.host_inode = net.netns_inode(host)
        self.client_inode = net.netns_inode(client)


@pytest.fixture
def lab(netns, caps):
    client, host = netns("c"), netns("h")
    a, b = net.unique("dtc"), net.unique("dth")
    net.add_veth(a, b, client, host)
    net.add_addr(a, CLIENT_IP + "/24", client)
    net.add_addr(b, HOST_IP + "/24", host)
    # the "container side": a veth pair inside the host namespace carrying 172.31.0.0/16
    br, peer = net.unique("dtb"), net.unique("dtp")
    net.add_veth(br, peer, host, host)
    net.add_addr(br, "172.31.0.1/16", host)
    # a new namespace copies the initial one's settings: set what the test relies on explicitly
    for key in ("net.ipv4.conf.all.forwarding", "net.ipv4.conf.default.forwarding",
                "net.ipv4.conf.%s.forwarding" % b, "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.%s.rp_filter" % b):
        net.sysctl_set(key, "0", host)
    net.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", str(DNAT_PORT),
             "-j", "DNAT", "--to-destination", "172.31.0.2:80"], netns=host)
    # a permanent neighbour entry: no packet waits on (or is dropped by) ARP resolution
    net.run(["ip", "neigh", "replace", HOST_IP, "lladdr", net.link_address(b, host), "dev", a, "nud", "permanent"], netns=client)
    lab = Lab(client, host)    # rules and veths go with the namespaces (netns fixture)
    # what `drops` names the forwarding-off drop: the kernel's reason, or "unknown" where it has none
    lab.ip_error = "IP_INADDRERRORS" if caps.has("drop_reason_enum") else "unknown"
    return lab


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn(src, dst, sport, dport):
    """A bare TCP SYN header with a correct checksum (the kernel adds the IP header)."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    return hdr[:16] + struct.pack("!H", _csum(pseudo + hdr)) + hdr[18:]


def send_syns(lab, n, dport=DNAT_PORT):
    with entered(net.netns_path(lab.client)):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with s:
        for i in range(n):
            s.sendto(syn(CLIENT_IP, HOST_IP, 40000 + i, dport), (HOST_IP, 0))


def send_udp(ns, n, dst, port=CLOSED_UDP_PORT):
    with entered(net.netns_path(ns)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(n):
            s.sendto(b"dnattrace", (dst, port))


def settle():
    time.sleep(0.3)   # veth delivery runs in softirq: let the last packets be processed


def counts(counter):
    rows = counter.read()
    d = engine.Describer(nsnames.Namer(use_docker=False), kallsyms.load())
    return rows, [d.describe(r) for r in rows]


def udp_no_socket(described):
    return sum(d["count"] for d in described if d["reason"] == "NO_SOCKET" and d["proto"] == "udp")


@pytest.mark.guest
def test_exact_counts_at_the_right_site_reason_and_namespace(lab):
    with engine.DropCounter() as everything, engine.DropCounter(netns=lab.host_inode) as host_only:
        send_syns(lab, N)
        send_udp(lab.client, N, HOST_IP)
        send_udp(lab.client, N, "127.0.0.1")      # drops in the client namespace: must not leak
        settle()
        rows, described = counts(host_only)
        _, all_described = counts(everything)

    by_site = engine.by_function(described)
    assert by_site[("ip_error", lab.ip_error)] == N
    udp = [d for d in described if d["reason"] == "NO_SOCKET"]
    assert sum(d["count"] for d in udp) == N
    assert {d["proto"] for d in udp} == {"udp"} and all("udp" in d["function"] for d in udp)
    assert {r.netns for r in rows} == {lab.host_inode}
    assert all(d["netns"] == lab.host for d in described)        # named after `ip netns`
    syn_rows = [d for d in described if d["function"] == "ip_error"]
    assert {d["proto"] for d in syn_rows} == {"tcp"}
    # the unfiltered counter saw the client's own drops too, so the filter really filtered
    client_udp = [d for d in all_described if d["netns_inode"] == lab.client_inode and d["reason"] == "NO_SOCKET"]
    assert sum(d["count"] for d in client_udp) == N


@pytest.mark.guest
def test_port_view_follows_the_published_port_across_dnat(lab):
    with engine.DropCounter(port=DNAT_PORT) as port_view:
        send_syns(lab, N)
        send_syns(lab, N, dport=DNAT_PORT + 1)   # same path, other port: not in the view
        send_udp(lab.client, N, HOST_IP)
        settle()
        rows, described = counts(port_view)
    assert engine.by_function(described)[("ip_error", lab.ip_error)] == N
    assert udp_no_socket(described) == 0
    assert {r.port for r in rows} == {DNAT_PORT}


def test_proto_filter_and_deltas_between_reads(lab):
    with engine.DropCounter(netns=lab.host_inode, proto="udp") as dc:
        send_syns(lab, N)
        send_udp(lab.client, N, HOST_IP)
        settle()
        first = counts(dc)[1]
        send_udp(lab.client, 2, HOST_IP)
        settle()
        second = counts(dc)[1]
        total = engine.decode_rows(dc._obj.map("drops").items())
    assert udp_no_socket(first) == N and not any(d["function"] == "ip_error" for d in first)
    assert udp_no_socket(second) == 2                 # a read reports what was gained since the last one
    assert sum(r.count for r in total if r.l4proto == 17 and r.reason == first[0]["reason_code"]) == N + 2
    assert dc.overflow == 0


def test_classic_tracepoint_fallback_counts_the_same(lab):
    with engine.DropCounter(netns=lab.host_inode, prefer_btf=False) as dc:
        assert dc.probe == "tracepoint/skb/kfree_skb"
        send_syns(lab, N)
        send_udp(lab.client, N, HOST_IP)
        settle()
        described = counts(dc)[1]
    assert engine.by_function(described)[("ip_error", lab.ip_error)] == N
    assert udp_no_socket(described) == N


def test_stacks_start_at_the_drop_site(lab):
    with engine.DropCounter(netns=lab.host_inode, stacks=True) as dc:
        send_syns(lab, N)
        settle()
        rows = [r for r in dc.read() if r.count]
        d = engine.Describer(nsnames.Namer(use_docker=False), kallsyms.load())
        site = [r for r in rows if d.symbols.function(r.location) == "ip_error"]
        assert sum(r.count for r in site) == N
        frames = d.frames(dc.stack(site[0].stack_id), site[0].location)
    assert frames[0].startswith("ip_error+0x") and len(frames) > 1


# -- the real command ---------------------------------------------------------------------------------

class Cli:
    """`python3 -m dnattrace.cli -v drops ...` in a subprocess; waits until it says it is counting."""

    def __init__(self, *args):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen([sys.executable, "-m", "dnattrace.cli", "-v", "drops", *args],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=self.err, text=True)
        deadline = time.monotonic() + slow(10)
        while "counting drops with" not in self.stderr():
            assert self.p.poll() is None, "drops exited early: %s" % self.stderr()
            assert time.monotonic() < deadline, "drops did not attach within 10 s"
            time.sleep(0.05)

    def stderr(self):
        self.err.seek(0)
        return self.err.read()

    def finish(self):
        try:
            out, _ = self.p.communicate(timeout=20)
        finally:
            if self.p.poll() is None:
                self.p.kill()
            self.err.close()
        assert self.p.returncode == 0
        return out


@pytest.mark.guest
def test_cli_json(lab):
    cli = Cli("--json", "--duration", "2", "--interval", "0.5", "--netns", lab.host)
    send_syns(lab, N)
    send_udp(lab.client, N, HOST_IP)
    out = cli.finish()
    objs = [json.loads(line) for line in out.splitlines()]
    assert objs[0]["type"] == "start" and objs[-1]["type"] == "summary"
    intervals = [o for o in objs if o["type"] == "interval"]
    assert len(intervals) == 4
    for kind_rows in ([r for o in intervals for r in o["rows"]], objs[-1]["rows"]):
        assert sum(r["count"] for r in kind_rows if r["function"] == "ip_error"
                   and r["reason"] == lab.ip_error) == N
        assert sum(r["count"] for r in kind_rows if r["reason"] == "NO_SOCKET") == N
        assert {r["netns"] for r in kind_rows} == {lab.host}
    ip_error = next(r for r in objs[-1]["rows"] if r["function"] == "ip_error")
    assert ("forwarding" if lab.ip_error != "unknown" else "no drop reasons") in ip_error["meaning"]
    assert ip_error["proto"] == "tcp"


def test_cli_dropwatch_lines(lab):
    cli = Cli("--dropwatch", "--duration", "1.5", "--netns", lab.host, "--proto", "tcp")
    send_syns(lab, N)
    out = cli.finish()
    lines = out.splitlines()
    import re
    shape = re.compile(r"^(\d+) drops at ([\w.]+)\+0x[0-9a-f]+ \((0xffff[0-9a-f]{12})\) \[([A-Z0-9_]+)\]$")
    matches = [shape.match(l) for l in lines]
    assert lines and all(matches), lines
    assert sum(int(m.group(1)) for m in matches if m.group(2) == "ip_error" and m.group(4) == lab.ip_error) == N


def test_cli_table_by_reason(lab):
    cli = Cli("--duration", "1", "--netns", lab.host, "--by", "reason")
    send_syns(lab, N)
    out = cli.finish()
    assert lab.ip_error in out and "total" in out and "since start" in out


@pytest.mark.parametrize("args, words", [
    (["--port", "0"], "--port"),
    (["--port", "70000"], "--port"),
    (["--interval", "0"], "--interval"),
    (["--netns", "no-such-namespace-dt"], "no-such-namespace-dt"),
])
def test_bad_input_is_one_line_and_exit_2(root, args, words):
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "drops", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr
    assert p.stdout == ""


def test_not_root_is_one_line_and_exit_3(root):
    """Without the capabilities root has (taken away from the bounding set), drops says so in one line."""
    p = subprocess.run(["setpriv", "--bounding-set=-bpf,-perfmon,-sys_admin", "--inh-caps=-all",
                        sys.executable, "-m", "dnattrace.cli", "drops", "--duration", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 3, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "root" in p.stderr


def test_cli_by_rule_and_by_chain_from_the_counters_of_every_table(lab):
    """--by rule / --by chain: netfilter's drops split by the rule whose counter moved (an nft table here,
    beside iptables-nft's nat table); a counterless rule's drops are not spread over the chains but shown
    as what no counter explains; the other drops as one row."""
    net.run(["nft", "-f", "-"], netns=lab.host, input=(
        "table inet guard {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        "  tcp dport 18081 counter drop\n  udp dport 19998 drop\n }\n}\n"))
    for by in ("rule", "chain"):
        cli = Cli("--json", "--by", by, "--duration", "1.5", "--interval", "0.5", "--netns", lab.host)
        send_syns(lab, N, dport=18081)
        send_udp(lab.client, 3, HOST_IP, port=19998)
        send_udp(lab.client, 2, HOST_IP)            # nothing listens: NO_SOCKET, not netfilter
        settle()
        objs = [json.loads(line) for line in cli.finish().splitlines()]
        summary = objs[-1]
        assert summary["type"] == "summary"
        rows = {(r["chain"], r["rule"]): r["count"] for r in summary["rows"]}
        counted = ("nft inet guard input", "tcp dport 18081 counter drop # handle 2" if by == "rule" else "")
        other = rows.pop(("(not netfilter)", ""))
        assert other >= 2, "the closed port's datagrams (and the new links' own noise)"
        assert rows == {counted: N, ("(no counter moved: a counterless nft rule or an nft chain policy)", ""): 3}, rows
        intervals = [r for o in objs if o["type"] == "interval" for r in o["rows"]]
        assert sum(r["count"] for r in intervals if r["chain"] == "nft inet guard input") == N
