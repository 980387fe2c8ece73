"""Issue 13: what a killed run leaves, a full disk, namespaces removed under a watch, exit codes as the
README's table says, privileges named, half-built lab instances. Every test runs the real CLI of this
tree as a subprocess, with its own run directory (tests/hostcheck.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import hostcheck as hc
from dnattrace.netns import build as net


@pytest.fixture
def run_dir(root):
    d = hc.new_run_dir()
    os.chmod(d, 0o755)
    yield d
    hc.kill_all(d)
    hc.cli(d, "lab", "down", "--all", timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def lab_up(run_dir, scenario="forwarding-off", tag="hx"):
    name = net.unique(tag)[:8]
    p = hc.cli(run_dir, "lab", "up", scenario, "--prefix", name, timeout=120)
    assert p.returncode == 0, p.stderr
    return name


def one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# -- item 3: a SIGKILLed diagnose --probe ------------------------------------------------------------

@pytest.mark.parametrize("cleaner", [["diagnose", "--probe", "--port", "8079", "--timeout", "2"],
                                     ["lab", "down", "--all"]], ids=["next-probe", "lab-down-all"])
def test_killed_probe_leaves_nothing_after_the_next_run(run_dir, cleaner):
    host = hc.Host(run_dir)
    p = hc.start(run_dir, "diagnose", "--probe", "--port", "8079", "--timeout", "10")
    try:
        end = time.monotonic() + 30
        made = set()
        while not made and time.monotonic() < end and p.poll() is None:
            made = {n for n in hc.netns_names() - host.netns if n.startswith("dp")}
            time.sleep(0.005)
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    assert made, "the probe's namespace existed when it was killed"
    assert made & hc.netns_names(), "SIGKILL left the namespace (what the next run must remove)"
    q = hc.cli(run_dir, *cleaner, timeout=60)
    assert q.returncode in (0, 1), q.stderr
    assert not made & hc.netns_names()
    host.assert_same()


# -- item 5: a full disk -------------------------------------------------------------------------------

FULL = "cannot write /dev/full: No space left on device"


@pytest.mark.parametrize("args,to_full,summary", [
    (["watch", "--port", "8079", "--duration", "1"], True, "no matching packets were seen"),
    (["watch", "--port", "8079", "--duration", "1", "--json"], True, '"type":"summary"'),
    (["watch", "--port", "8079", "--duration", "1", "--pcap", "/dev/full"], False, "no matching packets were seen"),
    (["drops", "--json", "--interval", "0.3", "--count", "2"], True, '"type":"summary"'),
    (["drops", "--interval", "0.3", "--count", "2"], True, "since start"),
    (["lab", "list"], True, None),
], ids=["watch-stdout", "watch-json", "watch-pcap", "drops-json", "drops", "lab-list"])
def test_full_disk_is_one_line_exit_3_and_the_summary_still_shown(run_dir, args, to_full, summary):
    with open("/dev/full", "w") as full:
        p = hc.cli(run_dir, *args, stdout=full if to_full else subprocess.PIPE)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("dnattrace:")]
    assert errors == ["dnattrace: " + FULL], p.stderr
    if summary:
        assert summary in (p.stderr if to_full else p.stdout), p.stderr


def test_broken_pipe_ends_quietly_with_0(run_dir):
    """`drops | head -1`, `watch --json | head -1`: the reader had what it wanted; exit 0, nothing said."""
    for args in (["drops", "--interval", "0.2", "--count", "20"], ["watch", "--json", "--port", "8079", "--duration", "20"]):
        p = hc.start(run_dir, *args)
        p.stdout.readline()
        p.stdout.close()
        if args[0] == "watch":
            # its next line (the summary) meets the closed pipe
            p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0, args
        assert p.stderr.read() == "", args


@pytest.mark.parametrize("args", [["diagnose", "--port", "8079", "--timeout", "1"], ["doctor"],
                                  ["drops", "--count", "1"], ["watch", "--port", "8079", "--duration", "1"]],
                         ids=lambda a: a[0])
def test_closed_stdout_is_one_line_exit_3(run_dir, args):
    """`>&-`: nothing can be written; one line, exit 3, before anything is attached (a file opened
    later would take fd 1 and receive the output)."""
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", *args], cwd=hc.ROOT, env=hc.env(run_dir),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
                       preexec_fn=lambda: os.close(1))
    assert p.returncode == 3, p.stderr
    assert one_line(p.stderr) == "dnattrace: cannot write the output: stdout is closed"


def test_pcap_that_cannot_be_written_exits_3(run_dir, tmp_path):
    """--pcap to a directory, or onto a read-only file system: cannot write (3), not bad input."""
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        for target in (str(tmp_path), str(ro / "x.pcapng")):
            p = hc.cli(run_dir, "watch", "--port", "8079", "--duration", "1", "--pcap", target)
            assert p.returncode == 3, p.stderr
            assert one_line(p.stderr).startswith("dnattrace: cannot write %s: " % target)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("args", [["watch", "--port", "8079"], ["drops"]], ids=lambda a: a[0])
def test_watch_and_drops_interrupted_at_once_exit_0(run_dir, args):
    """Ctrl-C is how watch and drops stop, also in their first moments (before their own handling of it
    is in place): exit 0, no traceback. (Not before Python runs the package's first line: a signal
    then meets the interpreter's own start-up.)"""
    for delay in (0.15, 0.25):
        p = hc.start(run_dir, *args)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=30)
        err = p.stderr.read()
        assert rc == 0 and "Traceback" not in err, (delay, rc, err)


# -- item 8: namespaces removed under a watch ----------------------------------------------------------

def test_watch_says_its_namespaces_are_gone_and_exits_3(run_dir):
    name = lab_up(run_dir)
    p = hc.start(run_dir, "watch", "--port", "8080", "--netns", name + "-host", "--duration", "60")
    try:
        assert hc.wait_line(p, "Watching"), p.stderr.read()
        assert hc.cli(run_dir, "lab", "down", name, timeout=60).returncode == 0
        rc = p.wait(timeout=15)
    finally:
        p.kill()
    err = p.stderr.read()
    assert rc == 3, err
    assert err.count("nothing left to watch") == 1 and "Traceback" not in err, err
    assert "/run/netns/%s-host" % name in err


# -- item 9: exit codes, every command -----------------------------------------------------------------

AS_NOBODY = textwrap.dedent("""
    import os, sys, locale, gettext
    import dnattrace.cli, dnattrace.commands.doctor, dnattrace.commands.drops, dnattrace.commands.watch
    import dnattrace.commands.diagnose, dnattrace.lab.cli, dnattrace.lab.demo, dnattrace.diagnose.run
    import dnattrace.diagnose.probeclient, dnattrace.output.diagnosis, dnattrace.watch.resolve, tabulate
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    sys.exit(dnattrace.cli.main(sys.argv[1:]))
""")


def as_nobody(run_dir, *args):
    return subprocess.run([sys.executable, "-c", AS_NOBODY] + list(args), capture_output=True, text=True,
                          timeout=60, cwd="/", env=hc.env(run_dir))


NOT_ROOT = [["doctor"], ["drops", "--count", "1"], ["watch", "--port", "80", "--duration", "1"],
            ["diagnose", "--port", "80", "--timeout", "1"], ["demo"], ["lab", "up", "forwarding-off"],
            ["lab", "down", "--all"], ["lab", "traffic", "x"]]


@pytest.mark.parametrize("args", NOT_ROOT, ids=lambda a: "-".join(a[:2]))
def test_not_root_exits_3_for_every_command(run_dir, args):
    p = as_nobody(run_dir, *args)
    assert p.returncode == 3, p.stderr
    line = one_line(p.stderr)
    assert "root" in line


BAD_INPUT = [["doctor", "--bogus"], ["drops", "--interval", "0"], ["watch", "--port", "0"],
             ["watch", "--port", "80", "--netns", "/tmp"], ["diagnose", "--port", "80", "--netns", "/tmp"],
             ["diagnose", "--timeout", "nan", "--port", "80"], ["demo", "--scenario", "no-such"],
             ["lab", "up", "no-such"], ["lab", "traffic", "no-such-instance"], ["lab", "down"],
             ["lab", "status", "--bogus"], ["lab", "list", "--bogus"], ["no-such-command"],
             ["lab", "down", "no-such-instance"], ["drops", "--interval", "1e-9"]]


@pytest.mark.parametrize("args", BAD_INPUT, ids=lambda a: "-".join(a[:3]))
def test_bad_input_exits_2_for_every_command(run_dir, args):
    p = hc.cli(run_dir, *args)
    assert p.returncode == 2, p.stderr
    line = one_line(p.stderr)
    if "/tmp" in args:
        assert "--netns /tmp is not a network namespace" in line


@pytest.mark.parametrize("args,sig,code", [
    (["diagnose", "--port", "8079", "--timeout", "30"], signal.SIGTERM, 143),
    (["diagnose", "--port", "8079", "--timeout", "30"], signal.SIGINT, 130),
    (["demo", "--scenario", "healthy"], signal.SIGTERM, 143),
    (["watch", "--port", "8079"], signal.SIGTERM, 0),     # the signal is how a watch ends: summary, 0
    (["drops"], signal.SIGINT, 0),
], ids=["diagnose-term", "diagnose-int", "demo-term", "watch-term", "drops-int"])
def test_signals_exit_as_documented(run_dir, args, sig, code):
    p = hc.start(run_dir, *args)
    try:
        ready = {"drops": "Counting", "demo": "Client "}.get(args[0], "Watching")
        assert hc.wait_line(p, ready, timeout=60), p.stderr.read()
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        p.kill()
    err = p.stderr.read()
    assert rc == code, err
    assert "Traceback" not in err


def test_readme_has_the_exit_code_table():
    with open(os.path.join(hc.ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("0", "1", "2", "3", "130", "143"):
        assert "| %s |" % code in section, code


# -- item 10: drops without privileges -----------------------------------------------------------------

def test_drops_as_nobody_names_the_privileges(run_dir):
    p = as_nobody(run_dir, "drops", "--count", "1")
    assert p.returncode == 3, p.stderr
    line = one_line(p.stderr)
    assert "CAP_BPF" in line and "CAP_PERFMON" in line and "CAP_SYS_ADMIN" in line and "root" in line
    assert "kptr_restrict" not in line and "kallsyms" not in line


# -- item 11: half-built lab instances -----------------------------------------------------------------

def test_lab_status_marks_a_killed_up_incomplete(run_dir):
    host = hc.Host(run_dir)
    name = net.unique("hk")[:8]
    p = hc.start(run_dir, "lab", "up", "forwarding-off", "--prefix", name)
    state = os.path.join(run_dir, "lab", name + ".json")
    end = time.monotonic() + 20
    while time.monotonic() < end and not os.path.exists(state):     # written before anything is made
        time.sleep(0.002)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    rows = [json.loads(line) for line in hc.cli(run_dir, "lab", "status", "--json").stdout.splitlines()]
    assert [r["status"] for r in rows if r["name"] == name] == ["incomplete"], rows
    assert "incomplete" in hc.cli(run_dir, "lab", "status").stdout
    assert hc.cli(run_dir, "lab", "down", "--all", timeout=120).returncode == 0
    host.assert_same()


def test_lab_instance_status_follows_its_builder():
    from dnattrace.lab import state
    inst = state.Instance(name="x", scenario="healthy", docker=False, token="x", client_ns="c", host_ns="h",
                          container_ns="k", container_name=None, client_addr="", target_addr="", target_port=1,
                          proto="tcp", container_addr="", container_port=1, outside_if="", bridge="")
    assert inst.status() == "incomplete"      # a state file from a run that never said who built it
    inst.builder = {"pid": os.getpid(), "start": state.process_start(os.getpid())}
    assert inst.status() == "building"
    inst.builder = {"pid": os.getpid(), "start": "0"}     # that pid, but another process now
    assert inst.status() == "incomplete"
    inst.complete = True
    assert inst.status() == "up"
