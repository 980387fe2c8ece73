"""`dnattrace watch` on the real kernel, against lab scenarios (namespace hosts and real Docker)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import require, slow
from dnattrace.kernel import capabilities
from dnattrace import lab
from dnattrace.diagnose import probeclient
from dnattrace.netns import build as net

pytestmark = pytest.mark.kernel


WATCH = (sys.executable, "-m", "dnattrace.cli", "watch", "--json")
# The real CLI's watch in a Python that then reports what this process imported and its peak resident
# memory: dnattrace.apart must have kept Docker's and pyroute2's imports in short-lived children.
WATCH_THEN_REPORT = (sys.executable, "-c", """if True:
    import json, sys
    from dnattrace import cli
    rc = cli.main(["watch", "--json"] + sys.argv[1:])
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    heavy = sorted(m for m in ("docker", "requests", "urllib3", "pyroute2") if m in sys.modules)
    print(json.dumps({"type": "exit", "rc": rc, "heavy": heavy, "hwm_kb": hwm}))
""")
MEMORY_BUDGET_KB = 60 * 1024    # watch's peak resident memory (VmHWM)


def start_watch(*args, command=WATCH, env=None):
    """Start `dnattrace watch --json ...` and wait until it says its probes are attached; the start
    record is kept as p.start. env: variables to add to this process's environment."""
    p = subprocess.Popen(list(command) + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **(env or {})))
    line = p.stdout.readline()
    if not line:
        p.wait(10)
        pytest.fail("watch did not start: %s" % p.stderr.read())
    p.start = json.loads(line)
    assert p.start["type"] == "start"
    return p


def records(p, timeout=30):
    """The JSON records a watch printed after its start record; it must exit 0."""
    out, err = p.communicate(timeout=slow(timeout))
    assert p.returncode == 0, err
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def finish(p, timeout=30):
    return journeys_and_summary(records(p, timeout))


def journeys_and_summary(objs):
    assert objs and objs[-1]["type"] == "summary", objs
    return [o for o in objs if o["type"] == "journey"], objs[-1]




def watch_lab(inst, attempts=1, timeout=2.5, extra=(), env=None):
    args = ["--port", str(inst.target_port), "--duration", str(slow(timeout + 1.5))] + list(extra)
    if inst.host_ns:
        args += ["--netns", inst.host_ns]
    p = start_watch(*args, env=env)
    watch_lab.start = p.start
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, attempts, slow(timeout))
    try:
        return finish(p)
    finally:
        probeclient.stop(client)


def points(j):
    return [(s["point"], s.get("hook"), s.get("stage")) for s in j["steps"]]


def mine(journeys, inst):
    """Journeys of this instance's client (other sessions may run lab instances with the same addresses)."""
    return [j for j in journeys if any(s.get("netns_name", "").startswith(inst.name) for s in j["steps"])]


@pytest.mark.guest
def test_healthy_journey_hook_by_hook(lab_instance):
    inst = lab_instance("healthy")
    journeys, summary = watch_lab(inst)
    assert summary["lost_events"] == 0
    js = mine(journeys, inst)
    syn = next(j for j in js if j["steps"][0].get("tcp_flags") == "S")
    host, ctr = inst.name + "-host", inst.name + "-ctr"
    steps = syn["steps"]
    assert steps[0]["point"] == "rx" and steps[0]["ifname"] == inst.outside_if and steps[0]["netns_name"] == host
    pre = [s for s in steps if s.get("hook") == "PREROUTING" and s["netns_name"] == host]
    assert pre[0]["tuple"]["dst"] == inst.target_addr and pre[-1]["tuple"]["dst"] == inst.container_addr, \
        "PREROUTING shows the DNAT rewrite to the container"
    route = next(s for s in steps if s["point"] == "route")
    assert route["route"]["oif"] == inst.bridge and route["route"]["local"] is False
    host_hooks = []
    for s in steps:
        if s["point"] == "nf" and s["netns_name"] == host and (not host_hooks or host_hooks[-1] != s["hook"]):
            host_hooks.append(s["hook"])
    assert host_hooks == ["PREROUTING", "FORWARD", "POSTROUTING"]
    assert any(s["point"] == "xmit" and s["netns_name"] == host for s in steps)
    assert any(s["point"] == "rx" and s["netns_name"] == ctr for s in steps)
    assert syn["outcome"] == "delivered" and steps[-1]["netns_name"] == ctr
    synack = next(j for j in js if j["direction"] == "reply" and j["steps"][0].get("tcp_flags") == "SA")
    out = [s for s in synack["steps"] if s["point"] == "xmit" and s["ifname"] == inst.outside_if]
    assert out and out[0]["tuple"]["src"] == inst.target_addr and out[0]["tuple"]["sport"] == inst.target_port, \
        "the SYN-ACK leaves by the outside interface un-NATed"
    conn = next(c for c in summary["connections"] if c["key"]["dport"] == inst.target_port)
    assert conn["outcome"] == "answered"


def test_direct_header_loads_and_the_helper_fallback_see_the_same_journey(lab_instance, caps):
    """rx_direct / nf_first_direct (bpf_rdonly_cast loads) and rx_btf / nf_first (bpf_probe_read_kernel)
    are alternatives chosen by probing: both must follow the SYN through the same points."""
    require(caps.has("direct_read"), "direct_read")
    inst = lab_instance("healthy")
    seen = {}
    for avoid in ("", "direct_read"):
        journeys, summary = watch_lab(inst, env={capabilities.AVOID_ENV: avoid})
        rx = watch_lab.start["probes"]["device receive"]
        assert rx == (["rx_btf"] if avoid else ["rx_direct"])
        syn = next(j for j in mine(journeys, inst) if j["steps"][0].get("tcp_flags") == "S")
        assert syn["outcome"] == "delivered" and summary["lost_events"] == 0
        seen[rx[0]] = [(s["point"], s.get("hook"), s["netns_name"], s.get("ifname")) for s in syn["steps"]]
    assert seen["rx_direct"] == seen["rx_btf"]


def test_sigterm_stops_watch_like_ctrl_c_with_its_summary(netns):
    """`timeout 60 dnattrace watch ...` sends SIGTERM: the summary must still come, and the exit be 0."""
    p = start_watch("--port", "19998", "--netns", netns("st"))
    p.send_signal(signal.SIGTERM)
    journeys, summary = finish(p)
    assert journeys == [] and summary["connections"] == [] and summary["lost_events"] == 0


@pytest.mark.guest
def test_forwarding_off_retransmissions_grouped_and_dropped_at_ip_error(lab_instance):
    inst = lab_instance("forwarding-off")
    journeys, summary = watch_lab(inst, timeout=2.5)
    syns = [j for j in mine(journeys, inst) if j["transmission"]]
    assert len(syns) >= 2 and len({json.dumps(j["connection"]) for j in syns}) == 1, \
        "the SYN and its retransmissions are one attempt"
    assert [j["transmission"] for j in syns] == list(range(1, len(syns) + 1))
    for j in syns:
        last = j["steps"][-1]
        assert last["point"] == "drop" and last["location"].startswith("ip_error+")
        assert last["reason"] == "IP_INADDRERRORS"
        # just before: the route lookup, then (where fexit/kretprobe on ip_route_input_noref work) its result
        before = [s["point"] for s in j["steps"][-3:-1]]
        assert before in (["route", "rtresult"], [j["steps"][-3]["point"], "route"]), j["steps"]
        route = [s for s in j["steps"] if s["point"] == "route"][-1]
        assert route["route"]["oif"] == inst.bridge
    conn = next(c for c in summary["connections"] if c["key"] == syns[0]["connection"])
    assert conn["outcome"] == "dropped" and conn["dropped"] == conn["transmissions"] == len(syns)


@pytest.mark.parametrize("avoid", ["", "direct_read"])
def test_drops_of_connections_not_followed_are_counted_by_site(lab_instance, caps, avoid):
    """--max-rate 1 and four connections that forwarding-off drops, each given up before its SYN is sent
    again: the one or two admitted are followed to ip_error, the others are counted as not followed, and
    each of their SYNs' drops is still reported by site: live, about once a second, and in the summary.
    Both drop programs count them: drop_direct (direct header loads) and drop_btf (its fallback)."""
    require(caps.has("direct_read") or avoid, "direct_read")
    inst = lab_instance("forwarding-off")
    p = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--duration", str(slow(4)),
                    "--max-rate", "1", env={capabilities.AVOID_ENV: avoid})
    assert p.start["probes"]["drop"] == (["drop_btf"] if avoid else ["drop_direct"])
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 4, 0.4)
    try:
        objs = records(p)
    finally:
        probeclient.stop(client)
    _journeys, summary = journeys_and_summary(objs)
    followed = [c for c in summary["connections"] if c["key"]["src"] == inst.client_addr]
    assert all(c["outcome"] == "dropped" for c in followed) and 1 <= len(followed) <= 2
    assert summary["not_followed"] == 4 - len(followed)
    host = inst.name + "-host"
    sites = [d for d in summary["unfollowed_drops"] if d["netns"] == host]
    assert [(d["function"], d["reason"]) for d in sites] == [("ip_error", "IP_INADDRERRORS")], summary
    assert sites[0]["count"] == summary["not_followed"]
    assert sites[0]["port"] == inst.container_port and sites[0]["proto"] == "tcp"
    live = [d for o in objs if o["type"] == "unfollowed_drops" for d in o["drops"] if d["netns"] == host]
    assert live and sum(d["count"] for d in live) == sites[0]["count"], "each drop told once as it came"


@pytest.mark.guest
def test_forward_policy_drop_names_the_hook(lab_instance):
    inst = lab_instance("forward-policy-drop")
    journeys, _ = watch_lab(inst, timeout=1.2)
    j = next(j for j in mine(journeys, inst) if j["transmission"])
    assert j["steps"][-1]["reason"] == "NETFILTER_DROP"
    assert j["drop_hook"] == "FORWARD"
    assert ("nf", "FORWARD", "first") in points(j) and ("nf", "FORWARD", "last") not in points(j)


@pytest.mark.guest
def test_no_listener_shows_the_rst_reply(lab_instance):
    inst = lab_instance("no-listener")
    journeys, summary = watch_lab(inst, timeout=1.2)
    js = mine(journeys, inst)
    syn = next(j for j in js if j["transmission"])
    assert syn["steps"][-1]["reason"] == "NO_SOCKET" and syn["steps"][-1]["netns_name"] == inst.name + "-ctr"
    rst = [j for j in js if j["direction"] == "reply" and "R" in j["steps"][0]["tcp_flags"]]
    assert rst and rst[0]["connection"] == syn["connection"], "the container's RST is shown under the same connection"
    conn = next(c for c in summary["connections"] if c["key"] == syn["connection"])
    assert conn["outcome"] == "refused"


def test_pcap_has_one_record_per_point(lab_instance, tmp_path):
    from scapy.utils import RawPcapNgReader
    inst = lab_instance("forwarding-off")
    pcap = tmp_path / "j.pcapng"
    journeys, _ = watch_lab(inst, timeout=1.2, extra=["--pcap", str(pcap)])
    # (nor the route result and a hook's verdict, where the kernel gives them: the verdict comes after
    # the skb is freed, the route result is a dst, not the packet)
    with_packet = sum(1 for j in journeys for s in j["steps"] if s["point"] not in ("route", "rtresult", "verdict"))
    records = list(RawPcapNgReader(str(pcap)))
    assert records, "the pcapng file has records"
    # every point carries the packet as captured there, except the route lookup (a lookup, not a packet)
    assert len(records) == with_packet
    first = records[0][0]
    assert first[0] >> 4 == 4 and first[9] == 6, "raw IPv4 carrying TCP"


@pytest.mark.docker
def test_container_option_follows_into_docker(lab_instance):
    inst = lab_instance("healthy", docker=True)
    p = start_watch("--container", inst.container_name, "--duration", str(slow(3)))
    r = inst.traffic(attempts=1, timeout=2.0)
    journeys, summary = finish(p)
    assert r.ok
    syn = next(j for j in journeys if j["transmission"])
    names = {s["netns_name"] for s in syn["steps"]}
    assert "host" in names and inst.container_name in names, names
    assert any(s["point"] == "nf" and s["netns_name"] == inst.container_name for s in syn["steps"]), \
        "--container attaches the hooks in the container's namespace too"
    assert syn["outcome"] == "delivered"


@pytest.mark.parametrize("args,needle", [
    (["--port", "0"], "--port"),
    (["--port", "70000"], "--port"),
    (["--container", "no-such-container-dnattrace"], "no container"),
    (["--netns", "no-such-netns-dnattrace", "--port", "80"], "unknown network namespace"),
    ([], "--port PORT or --container"),
])
def test_bad_input_is_one_line(root, args, needle):
    if "--container" in args:     # telling "no such container" needs an engine to ask
        require(subprocess.run(["docker", "info"], capture_output=True).returncode == 0 if shutil.which("docker")
                else False, "a Docker engine (docker info)")
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "watch", "--duration", str(slow(1))] + args,
                       capture_output=True, text=True, timeout=slow(60))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr


@pytest.mark.docker
def test_container_without_published_port(root):
    from dnattrace.lab import docker_lab
    name = net.unique("dtnp")
    docker_lab.ensure_image()
    image = docker_lab.IMAGE
    subprocess.run(["docker", "run", "-d", "--name", name, image, "sleep", "60"], check=True, capture_output=True)
    try:
        p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "watch", "--container", name, "--duration", str(slow(1))],
                           capture_output=True, text=True, timeout=slow(60))
        assert p.returncode == 2 and "publishes no port" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.guest
def test_count_stops_after_n_attempts_and_src_filters(lab_instance):
    inst = lab_instance("forwarding-off")
    # --count 1: the watch ends by itself once one attempt was seen, well before --duration
    p = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--count", "1", "--duration", str(slow(20)))
    t0 = time.monotonic()
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 1, 1.0)
    try:
        journeys, summary = finish(p)
    finally:
        probeclient.stop(client)
    assert time.monotonic() - t0 < slow(10)
    assert len({json.dumps(j["connection"]) for j in journeys}) == 1
    # --src: two watches side by side, one for the client's range (sees the attempt, and --count 1 ends
    # it), one for another range (does not); the second is stopped once the first has ended, so its
    # window surely held the attempt, however long start-ups take (under emulation: tens of seconds)
    inside = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--src", "198.51.100.0/24",
                         "--count", "1", "--duration", str(slow(20)))
    outside = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--src", "203.0.113.0/24",
                          "--duration", str(slow(40)))
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 1, 1.0)
    try:
        seen, _ = finish(inside)
        outside.send_signal(signal.SIGINT)
        unseen, summary = finish(outside)
    finally:
        probeclient.stop(client)
    assert [j for j in seen if j["transmission"]], "the client's own range sees the attempt"
    assert unseen == [] and summary["connections"] == []


def client_and_host(netns):
    """Two new namespaces joined by a veth pair: a client 198.51.100.2 and a host 198.51.100.1."""
    client, host = netns("c"), netns("h")
    a, b = net.unique("dtc"), net.unique("dth")
    net.add_veth(a, b, client, host)
    net.add_addr(a, "198.51.100.2/24", client)
    net.add_addr(b, "198.51.100.1/24", host)
    return client, host


def send_udp(client, port, n=3):
    """n datagrams from the client to the host's port (nothing listens there)."""
    net.run([sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "[s.sendto(b'x', ('198.51.100.1', %d)) for _ in range(%d)]" % (port, n)], netns=client)


@pytest.mark.guest
def test_udp_to_a_closed_port_is_followed_to_its_drop(netns):
    client, host = client_and_host(netns)
    p = start_watch("--proto", "udp", "--port", "19999", "--netns", host, "--duration", str(slow(2)))
    send_udp(client, 19999)
    journeys, summary = finish(p)
    dgrams = [j for j in journeys if j["direction"] == "request"]
    assert len(dgrams) == 3, "each datagram is its own journey"
    # a BPF netfilter link is itself a hook; where hooks come from nf_hook_slow (no links), a namespace
    # without netfilter rules has no hooks for a packet to pass
    links = p.start["probes"].get("netfilter hooks", [""])[0].startswith("nf_")
    for j in dgrams:
        hooks = [s.get("hook") for s in j["steps"] if s["point"] == "nf"]
        assert ("PREROUTING" in hooks and "INPUT" in hooks) if links else hooks == [], j["steps"]
        route = next(s for s in j["steps"] if s["point"] == "route")
        assert route["route"]["local"] is True
        assert j["steps"][-1]["reason"] == "NO_SOCKET" and j["steps"][-1]["netns_name"] == host


def test_max_rate_follows_whole_connections_and_counts_the_rest(lab_instance):
    """--max-rate 3 and a burst of 10 connections well inside one second: exactly 3 are followed, each
    with its SYN-ACK (the kernel decides per connection, not per packet), and the other 7 are counted
    once each, however many probe points their packets passed."""
    inst = lab_instance("healthy")
    journeys, summary = watch_lab(inst, attempts=10, extra=("--max-rate", "3"))
    conns = [c for c in summary["connections"] if c["key"]["src"] == inst.client_addr]
    assert len(conns) == 3, summary
    assert all(c["replies"] and c["outcome"] == "answered" for c in conns), conns
    assert summary["not_followed"] == 7
    assert summary["lost_events"] == 0
    replies = [j for j in mine(journeys, inst) if j["direction"] == "reply"]
    assert len({json.dumps(j["connection"]) for j in replies}) == 3


def finish_light(p):
    """finish() for WATCH_THEN_REPORT, checking its exit report: no Docker SDK, no pyroute2, and a
    peak resident memory within the budget."""
    objs = records(p)
    report = objs.pop()
    assert report["type"] == "exit" and report["rc"] == 0, report
    assert report["heavy"] == [], "the watch process itself imported %s" % report["heavy"]
    assert report["hwm_kb"] < MEMORY_BUDGET_KB, "watch peaked at %d kB resident" % report["hwm_kb"]
    return journeys_and_summary(objs)


def test_watch_process_never_imports_docker_or_pyroute2(lab_instance):
    """The look-ups that need them (the DNAT rules and the namespace holding their target, the
    namespaces' addresses) ran in child processes: their answers are there, their imports are not."""
    inst = lab_instance("healthy")
    p = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--duration", str(slow(3)),
                    command=WATCH_THEN_REPORT)
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 1, 1.5)
    try:
        journeys, _summary = finish_light(p)
    finally:
        probeclient.stop(client)
    assert "DNATed to %s:%d" % (inst.container_addr, inst.container_port) in p.start["target"]
    assert p.start["netns"][1] == net.netns_path(inst.container_ns), "the container's namespace was found"
    syn = next(j for j in mine(journeys, inst) if j["transmission"])
    assert syn["outcome"] == "delivered" and syn["steps"][-1]["netns_name"] == inst.name + "-ctr"


def test_watch_of_a_port_in_this_namespace_asks_docker_apart(root):
    """A port of this namespace is first looked up in the Docker engine (whether or not one runs, the
    SDK is imported for it), then in the DNAT rules: all of it in a child process."""
    p = start_watch("--port", "9", "--duration", str(slow(1)), command=WATCH_THEN_REPORT)
    finish_light(p)


def test_tracer_detach_and_attach_again(netns):
    """WatchTracer.detach() closes every link with the programs still loaded, and attach() puts them
    back: what 'scripts/bench watchtoggle' relies on to compare with and without, seconds apart."""
    from dnattrace.watch import tracer as tr
    client, host = client_and_host(netns)

    def seen():
        send_udp(client, 19997)
        time.sleep(0.2)
        return [e for e in t.poll(100) if e.kind == 1]     # receive events: one per datagram

    with tr.WatchTracer([tr.FilterEntry(17, 19997)], [net.netns_path(host)]) as t:
        assert len(seen()) == 3
        t.detach()
        assert seen() == [], "a detached tracer still saw packets"
        t.attach()
        assert len(seen()) == 3


def test_tracer_loaded_early_then_aimed_sees_packets(netns):
    """watch loads its programs on a thread before it knows the target (WatchTracer.load_early), then
    aim() gives the filter and the namespaces: the packets of the port aimed at are seen, as when the
    tracer is made with them."""
    from dnattrace.watch import tracer as tr
    client, host = client_and_host(netns)
    t = tr.WatchTracer([]).load_early()
    try:
        t.aim([tr.FilterEntry(17, 19996)], [net.netns_path(host)]).start()
        send_udp(client, 19996)
        time.sleep(0.2)
        assert len([e for e in t.poll(100) if e.kind == 1]) == 3     # one receive event per datagram
    finally:
        t.close()


def test_a_failed_early_load_is_raised_by_start(root, monkeypatch):
    """An error on the loading thread (here a missing object) reaches the caller from start(), with its
    own message, and closing is safe."""
    from dnattrace.kernel import loader
    from dnattrace.watch import tracer as tr
    monkeypatch.setattr(tr, "OBJECT", "/nonexistent/watch.bpf.o")
    t = tr.WatchTracer([]).load_early()
    with pytest.raises(loader.BpfError, match="is missing"):
        t.aim([tr.FilterEntry(6, 9)], [None]).start()
    t.close()
