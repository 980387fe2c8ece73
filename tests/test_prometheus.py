"""`drops --prometheus` scraped by a real Prometheus server (Debian's `prometheus`) during a lab fault:
the PromQL sum of ip_error drops in the lab's host namespace equals the SYNs the kernel dropped there,
as an independent drop counter in this process saw them."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from dnattrace.drops import counter as engine
from dnattrace.kernel import kallsyms
from dnattrace.netns import build as net
from hostcheck import ROOT, new_run_dir

pytestmark = pytest.mark.kernel
ATTEMPTS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@pytest.fixture
def exporter(root):
    """`dnattrace drops --prometheus 127.0.0.1:0 --json` of this tree: (process, metrics URL)."""
    env = dict(os.environ, PYTHONPATH=ROOT, DNATTRACE_RUN_DIR=new_run_dir())
    p = subprocess.Popen([sys.executable, "-m", "dnattrace.cli", "drops", "--prometheus", "127.0.0.1:0",
                          "--interval", "0.5", "--duration", "120", "--json"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        start = json.loads(p.stdout.readline() or "{}")
        assert start.get("type") == "start", p.stderr.read() if p.poll() is not None else start
        yield p, start["prometheus"]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def prometheus(tmp_path, exporter):
    """A Prometheus server on a free loopback port scraping the exporter every second: its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is missing (scripts/bootstrap installs it)"
    target = urllib.parse.urlparse(exporter[1]).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      "scrape_configs:\n  - job_name: dnattrace\n    scrape_interval: 1s\n"
                      "    static_configs:\n      - targets: ['%s']\n" % target)
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen([binary, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp_path / "data"),
                          "--web.listen-address=127.0.0.1:%d" % port], stdout=log, stderr=log,
                         start_new_session=True)
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if "Ready" in get(base + "/-/ready"):
                    break
            except OSError:
                pass
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield base
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def query(base, promql):
    """The value of an instant PromQL query's first sample (None when the result is empty)."""
    answer = json.loads(get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_counts_the_drops_the_lab_caused(lab_instance, exporter, prometheus):
    inst = lab_instance("forwarding-off")
    symbols = kallsyms.load()
    with engine.DropCounter(netns=net.netns_inode(inst.host_ns)) as reference:
        inst.traffic(attempts=ATTEMPTS, timeout=1.0)       # each SYN dies in ip_error: forwarding is off
        time.sleep(0.3)
        dropped = sum(r.count for r in reference.cumulative() if symbols.function(r.location) == "ip_error")
    assert dropped >= ATTEMPTS

    promql = 'sum(dnattrace_drops_total{function="ip_error",netns="%s"})' % inst.host_ns
    deadline = time.monotonic() + 20
    seen = None
    while time.monotonic() < deadline:
        seen = query(prometheus, promql)
        if seen == dropped:
            break
        time.sleep(0.5)
    assert seen == dropped, (promql, seen, dropped)
    # the tool's own health, through the same server
    assert query(prometheus, "dnattrace_programs_attached") == 1
    assert query(prometheus, "dnattrace_map_overflows_total") == 0
    assert query(prometheus, 'up{job="dnattrace"}') == 1


def test_cardinality_is_bounded():
    from dnattrace.output import prometheus
    m = prometheus.DropMetrics("tp_btf/kfree_skb", max_series=3)
    rows = [{"function": "f%d" % i, "reason": "R", "netns": "host", "netns_inode": 1, "proto": "tcp", "count": 2}
            for i in range(5)]
    m.add(rows, overflow=4)
    m.add(rows[:1], overflow=0)          # a series already made stays its own
    families = {f.name: f for f in m.collect()}
    samples = {tuple(s.labels.values()): s.value for s in families["dnattrace_drops"].samples}
    assert len(samples) == 4 and samples[prometheus.OTHER] == 4 and samples[("f0", "R", "host", "tcp")] == 4
    assert families["dnattrace_map_overflows"].samples[0].value == 4
    unnamed = {"function": "f", "reason": "R", "netns": "netns:4026", "netns_inode": 4026, "proto": "udp"}
    assert prometheus.DropMetrics.labels(unnamed)[2] == "4026"


def test_an_address_in_use_is_one_line_exit_2_before_attaching(root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=ROOT, DNATTRACE_RUN_DIR=new_run_dir())
        p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "drops", "--prometheus", str(port),
                            "--duration", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "cannot serve Prometheus metrics on 127.0.0.1:%d" % port in p.stderr and not p.stdout


def test_chain_series_are_bounded_and_skip_what_is_not_netfilter():
    from prometheus_client import CollectorRegistry, generate_latest
    from dnattrace.output import prometheus
    m = prometheus.DropMetrics("tp_btf/kfree_skb", max_series=2)
    m.add_chains([{"count": 3, "chain": "nft inet f2b-table f2b-chain", "owner": "fail2ban", "netns": "host"},
                  {"count": 1, "chain": "(not netfilter)", "owner": "", "netns": ""},
                  {"count": 2, "chain": "iptables filter FORWARD", "owner": "", "netns": "host"},
                  {"count": 5, "chain": "nft inet filter forward", "owner": "nftables", "netns": "host"}])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(m)
    text = generate_latest(registry).decode()
    assert 'dnattrace_netfilter_drops_total{chain="nft inet f2b-table f2b-chain",netns="host",owner="fail2ban"} 3.0' in text
    assert 'dnattrace_netfilter_drops_total{chain="iptables filter FORWARD",netns="host",owner="unknown"} 2.0' in text
    assert 'dnattrace_netfilter_drops_total{chain="other",netns="other",owner="other"} 5.0' in text
    assert "not netfilter" not in text
