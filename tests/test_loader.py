"""The libbpf loader on the real kernel: programs load and attach and see real packets sent by the test in
its own namespaces; netfilter links are per namespace and go away on close(); maps and ring buffers
round-trip; verifier rejections, missing objects and SIGKILLed owners behave as promised."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import bpfobjs
from conftest import require
from dnattrace.kernel import capabilities, loader, objects, tracefs
from dnattrace.netns import build as net

PROBES = objects.path("probes")
SELFTEST = os.path.join(bpfobjs.BUILD_DIR, "selftest.bpf.o")     # test-only objects: tests/bpf
BAD = os.path.join(bpfobjs.BUILD_DIR, "bad.bpf.o")
N = 20


@pytest.fixture(autouse=True, scope="module")
def _built(test_objects):
    """SELFTEST and BAD are compiled before the first test of this module."""



# Sends n UDP datagrams to 127.0.0.1:port; with "listen" it also receives them and prints how many came.
UDP = textwrap.dedent("""
    import socket, sys
    n, port, listen = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "listen"
    rx = None
    if listen:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", port))
        rx.settimeout(2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        tx.sendto(b"dnattrace-test", ("127.0.0.1", port))
    got = 0
    try:
        while rx and got < n:
            rx.recv(64)
            got += 1
    except socket.timeout:
        pass
    print(got)
""")


def udp(ns, n, port=9, listen=False):
    """Send n datagrams on lo inside namespace ns (None: this one); returns how many a listener got."""
    out = net.run([sys.executable, "-c", UDP, str(n), str(port), "listen" if listen else "closed"], netns=ns)
    return int(out.stdout.strip())


def hits(obj, slot):
    return struct.unpack("<Q", obj.map("hits").lookup(struct.pack("<I", slot)))[0]


def wait_for(cond, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.mark.parametrize("prog,slot,kind", [("probe_tp_btf", 0, "tp_btf"), ("probe_raw_tp", 1, "raw_tp"),
                                            ("probe_tracepoint", 2, "tracepoint")])
def test_kfree_skb_program_counts_the_drops_we_cause(caps, netns, prog, slot, kind):
    require(caps.has(kind), kind)
    ns = netns("ld")
    with loader.BpfObject(PROBES).only(prog).load() as obj:
        link = obj.program(prog).attach()
        before = hits(obj, slot)
        udp(ns, N)          # to a closed port: each datagram is freed with NO_SOCKET
        assert wait_for(lambda: hits(obj, slot) - before >= N), "kfree_skb hits %d -> %d" % (before, hits(obj, slot))
        link.close()
        assert link.closed
        after = hits(obj, slot)
        udp(ns, N)
        assert hits(obj, slot) == after, "the program still counts after its link was closed"


def test_ring_buffer_delivers_drop_events_from_our_namespace_only(caps, netns):
    require(caps.has("tp_btf"), "tp_btf")
    require(caps.has("ringbuf"), "ringbuf")
    ns = netns("rb")
    inode = net.netns_inode(ns)
    no_socket = tracefs.drop_reasons()["NO_SOCKET"]
    events = []

    def on_event(raw):
        events.append(struct.unpack_from("<IIQH", raw))

    with loader.BpfObject(SELFTEST).only("selftest_drops").load() as obj:
        obj.map("want_netns").update(struct.pack("<I", 0), struct.pack("<I", inode))
        rb = obj.ring_buffer("events", on_event)
        obj.program("selftest_drops").attach()
        udp(None, N)                     # drops in this namespace must not show up
        udp(ns, N)
        end = time.monotonic() + 3
        while time.monotonic() < end and sum(1 for e in events if e[1] == no_socket) < N:
            rb.poll(100)
        ours = [e for e in events if e[1] == no_socket]
        assert len(ours) >= N, events
        assert all(e[0] == inode for e in events), "an event from another namespace: %s" % events
        assert all(e[2] >> 63 for e in ours), "location is not a kernel address"
        assert all(e[3] == 0x0800 for e in ours)
        # the in-kernel per-reason count agrees with what came through the ring buffer
        counted = obj.map("drops_by_reason").lookup(struct.pack("<I", no_socket))
        assert struct.unpack("<Q", counted)[0] == len(ours)

        def boom(raw):
            raise RuntimeError("callback failed")
        rb2 = obj.ring_buffer("events", boom)
        udp(ns, 2)
        with pytest.raises(RuntimeError, match="callback failed"):
            for _ in range(30):
                rb2.poll(100)


def test_netfilter_link_sees_only_its_namespace_and_is_gone_after_close(caps, netns):
    require(caps.has("netfilter_link"), "netfilter_link")
    ns = netns("nf")
    obj = loader.BpfObject(PROBES).only("probe_netfilter")
    try:
        obj.program("probe_netfilter").set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)
        obj.load()
        home = os.readlink("/proc/thread-self/ns/net")
        link = obj.program("probe_netfilter").attach_netfilter(loader.NF_INET_PRE_ROUTING, -399,
                                                               netns_path=net.netns_path(ns))
        assert link.description.endswith(net.netns_path(ns))
        assert os.readlink("/proc/thread-self/ns/net") == home, "did not come back to its namespace"
        base = hits(obj, 6)
        assert udp(ns, N, port=5353, listen=True) == N, "a packet was lost: observation changed a verdict"
        seen = hits(obj, 6) - base
        assert seen >= N
        base = hits(obj, 6)
        udp(None, N, port=5354, listen=True)      # the root namespace: not ours
        assert hits(obj, 6) == base, "the link saw traffic of another namespace"
        link.close()
        udp(ns, N, port=5353, listen=True)
        assert hits(obj, 6) == base, "the link still counts after close()"
    finally:
        obj.close()


def test_map_round_trip(root):
    with loader.BpfObject(SELFTEST).only().load() as obj:
        m = obj.map("drops_by_reason")
        k = lambda i: struct.pack("<I", i)
        v = lambda i: struct.pack("<Q", i)
        for i in range(1, 6):
            m.update(k(i), v(i * 100))
        assert m.lookup(k(3)) == v(300)
        assert sorted(m.keys()) == sorted(k(i) for i in range(1, 6))
        assert dict(m.items()) == {k(i): v(i * 100) for i in range(1, 6)}
        assert m.delete(k(3)) and m.lookup(k(3)) is None and not m.delete(k(3))
        m.clear()
        assert m.keys() == []
        with pytest.raises(ValueError):
            m.lookup(b"\0")

        pc = obj.map("scratch_percpu")
        assert pc.percpu and pc.ncpus == loader.num_possible_cpus()
        pc.update(k(7), [v(c + 1) for c in range(pc.ncpus)])
        assert pc.lookup(k(7)) == [v(c + 1) for c in range(pc.ncpus)]
        pc.update(k(8), v(5))
        assert pc.lookup(k(8)) == [v(5)] * pc.ncpus


def test_a_program_the_object_lacks_is_one_line_naming_the_rebuild():
    """A stale object (bpf/ changed, the objects not rebuilt) is a BpfError the CLI prints as one line."""
    obj = loader.BpfObject(PROBES)
    try:
        with pytest.raises(loader.BpfError, match="has no program probe_nonesuch: .*rebuild it"):
            obj.only("probe_tp_btf", "probe_nonesuch")
    finally:
        obj.close()


@pytest.mark.parametrize("prog", ["bad_unchecked_lookup", "bad_after_long_log"])
def test_verifier_rejection_carries_the_verifiers_message(root, prog):
    with pytest.raises(loader.BpfError) as info:
        with loader.BpfObject(BAD) as obj:
            obj.only(prog)
            obj.load()
    e = info.value
    assert "bad.bpf.o" in str(e).splitlines()[0]
    assert "map_value_or_null" in str(e)          # the verifier's own words
    assert "invalid mem access" in e.verifier_message()
    if prog == "bad_after_long_log":
        assert len(e.log) > 64 << 10              # the whole log came through, not its first page


def test_missing_object_is_one_clear_line():
    with pytest.raises(loader.BpfError) as info:
        loader.BpfObject("/nonexistent/dnattrace/nothing.bpf.o")
    text = str(info.value)
    assert "\n" not in text and "/nonexistent/dnattrace/nothing.bpf.o" in text and "missing" in text


CHILD = textwrap.dedent("""
    import json, sys, time
    from dnattrace.kernel import loader
    obj = loader.BpfObject(sys.argv[1]).only("probe_raw_tp", "probe_netfilter")
    obj.program("probe_netfilter").set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)
    obj.load()
    links = [obj.program("probe_raw_tp").attach(),
             obj.program("probe_netfilter").attach_netfilter(loader.NF_INET_PRE_ROUTING, -399, netns_path=sys.argv[2])]
    def info(fd, key):
        for line in open("/proc/self/fdinfo/%d" % fd):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    print(json.dumps({"progs": [info(obj.program(p).fd, "prog_id") for p in ("probe_raw_tp", "probe_netfilter")],
                      "links": [info(l.fd, "link_id") for l in links]}), flush=True)
    time.sleep(60)
""")


def _bpftool_ids(what):
    out = subprocess.run(["bpftool", what, "list", "-j"], capture_output=True, text=True, check=True).stdout
    return {x["id"] for x in json.loads(out or "[]")}


def test_sigkill_leaves_nothing_attached(root, netns):
    ns = netns("kill")
    child = subprocess.Popen([sys.executable, "-c", CHILD, PROBES, net.netns_path(ns)],
                             stdout=subprocess.PIPE, text=True)
    try:
        ids = json.loads(child.stdout.readline())
        assert all(ids["progs"]) and all(ids["links"]), ids
        assert set(ids["links"]) <= _bpftool_ids("link")
        assert set(ids["progs"]) <= _bpftool_ids("prog")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert wait_for(lambda: not set(ids["links"]) & _bpftool_ids("link")), "links survived SIGKILL"
    assert wait_for(lambda: not set(ids["progs"]) & _bpftool_ids("prog")), "programs survived SIGKILL"
