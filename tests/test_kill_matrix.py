"""SIGKILL, SIGTERM and SIGINT at a few moments of watch, drops, diagnose --probe and lab up; afterwards
(and after `lab down --all` where a SIGKILL leaves something for it) the host is as before: namespaces,
root-namespace links, BPF links, root ip_forward, lab state, processes (tests/hostcheck.py).

The watched lab host lives in a run directory of its own, so the `lab down --all` here only sees what
the killed runs left."""
import os
import shutil
import signal
import subprocess
import time

import pytest

import hostcheck as hc
from dnattrace.netns import build as net

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
MOMENTS = ("start-up", "attached", "capturing")
# what a clean stop on each signal exits with, once the command is running (README, "Exit codes");
# diagnose and lab up may also have finished (0/1) before the signal came
CLEAN = {"watch": {"TERM": {0}, "INT": {0}}, "drops": {"TERM": {0}, "INT": {0}},
         "diagnose": {"TERM": {143, 0, 1}, "INT": {130, 0, 1}}, "lab": {"TERM": {143, 0}, "INT": {130, 0}}}


@pytest.fixture
def target(root):
    """A healthy lab host to watch (own run directory) and a client namespace making connections to it."""
    lab_dir = hc.new_run_dir()
    name = net.unique("hx")[:8]
    p = hc.cli(lab_dir, "lab", "up", "healthy", "--prefix", name, timeout=120)
    assert p.returncode == 0, p.stderr
    client = subprocess.Popen(
        ["ip", "netns", "exec", name + "-client", "sh", "-c",
         "while :; do busybox wget -q -T 1 -O /dev/null http://198.51.100.1:8080/ 2>/dev/null; sleep 0.05; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    yield name
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    hc.cli(lab_dir, "lab", "down", name, timeout=120)
    shutil.rmtree(lab_dir, ignore_errors=True)


def commands(host):
    return {
        "watch": (["watch", "--port", "8080", "--netns", host, "--duration", "60"], "Watching"),
        "drops": (["drops", "--interval", "0.5"], "Counting"),
        "diagnose": (["diagnose", "--probe", "--port", "8080", "--netns", host, "--timeout", "30"], "Watching"),
    }


def kill_at(run_dir, args, ready, moment, sig):
    p = hc.start(run_dir, *args)
    try:
        if moment == "start-up":
            time.sleep(0.15)
        else:
            assert hc.wait_line(p, ready, timeout=30), p.stderr.read()
            if moment == "capturing":
                time.sleep(0.3)
        os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return rc, p.stderr.read()


def check_after(run_dir, host, name, moment, signame, rc, err):
    if signame != "KILL" and moment != "start-up":
        assert rc in CLEAN[name][signame], "exit %s: %s" % (rc, err[-500:])
        assert "Traceback" not in err, err
    if signame == "KILL":
        d = hc.cli(run_dir, "lab", "down", "--all", timeout=120)
        assert d.returncode == 0, d.stderr
    host.assert_same()


def lab_up_killed(run_dir, moment, signame, sig):
    """lab up signalled at start-up (Python still importing), as soon as its state file exists (the
    CLI's handlers are in place: it builds) or 0.3 s later; then lab down --all if something is left."""
    name = net.unique("hk")[:8]
    p = hc.start(run_dir, "lab", "up", "forwarding-off", "--prefix", name)
    state = os.path.join(run_dir, "lab", name + ".json")
    if moment == "start-up":
        time.sleep(0.1)
    else:
        end = time.monotonic() + 30
        while not os.path.exists(state) and p.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        if moment == "late":
            time.sleep(0.3)
    os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    if rc == 0 or signame == "KILL":    # finished before the signal, or killed: down --all
        d = hc.cli(run_dir, "lab", "down", "--all", timeout=120)
        assert d.returncode == 0, d.stderr
    elif moment != "start-up":
        assert rc in CLEAN["lab"][signame] and "Traceback" not in err, "exit %s: %s" % (rc, err[-500:])


def test_kill_matrix(target):
    run_dir = hc.new_run_dir()
    host = hc.Host(run_dir)
    failures = []
    for name, (args, ready) in commands(target + "-host").items():
        for moment in MOMENTS:
            for signame, sig in SIGNALS.items():
                rc, err = kill_at(run_dir, args, ready, moment, sig)
                try:
                    check_after(run_dir, host, name, moment, signame, rc, err)
                except AssertionError as e:
                    failures.append("%s at %s, SIG%s: %s" % (name, moment, signame, e))
    for moment in ("start-up", "building", "late"):
        for signame, sig in SIGNALS.items():
            try:
                lab_up_killed(run_dir, moment, signame, sig)
                host.assert_same()
            except AssertionError as e:
                failures.append("lab up at %s, SIG%s: %s" % (moment, signame, e))
    shutil.rmtree(run_dir, ignore_errors=True)
    assert not failures, "\n".join(failures)
