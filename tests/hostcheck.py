"""Running the real CLI against this tree with its own run directory, and checking that the host is left
as it was: namespaces, root-namespace links, BPF links, root ip_forward, lab state, processes.

The run directory (DNATTRACE_RUN_DIR) keeps `lab down --all` in these tests away from the lab
instances of other users of the machine. The machine is shared: the BPF link count is compared with
a few seconds' patience, since others attach and detach too."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

# DNATTRACE_TREE: run these tests against another checkout (to see them fail before a fix)
ROOT = os.environ.get("DNATTRACE_TREE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(run_dir: str, **extra) -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, DNATTRACE_RUN_DIR=run_dir, **extra)


def new_run_dir() -> str:
    return tempfile.mkdtemp(prefix="dnattrace-run-")


MINE = ("dp", "hk", "hx", "ht")     # name prefixes of what these tests make


def isolated() -> bool:
    """Whether the tree under test honours DNATTRACE_RUN_DIR (an older checkout does not: its
    `lab down --all` would remove every lab instance on the machine, other users' too)."""
    return os.path.exists(os.path.join(ROOT, "dnattrace", "netns", "record.py"))


def cli(run_dir, *args, timeout=60, stdout=subprocess.PIPE, **kw):
    """The real CLI of this tree, as a subprocess; CompletedProcess with text output."""
    args = [str(a) for a in args]
    if args[:2] == ["lab", "down"] and "--all" in args and not isolated():
        listed = cli(run_dir, "lab", "status", "--json").stdout.splitlines()
        for name in (json.loads(line)["name"] for line in listed):
            if name.startswith(MINE):
                cli(run_dir, "lab", "down", name, timeout=timeout)
        return subprocess.CompletedProcess(args, 99, "", "lab down --all: not isolated, own instances removed")
    return subprocess.run([sys.executable, "-m", "dnattrace.cli"] + [str(a) for a in args], cwd=ROOT,
                          env=env(run_dir), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)


def start(run_dir, *args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "dnattrace.cli"] + [str(a) for a in args], cwd=ROOT,
                            env=env(run_dir), stdout=stdout, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_line(p, needle, timeout=20.0) -> bool:
    """Read p's stdout until a line containing needle (True) or timeout/EOF (False)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            break
        line = p.stdout.readline()
        if not line:
            return False
        if needle in line:
            return True
    return False


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def bpf_link_count() -> int:
    out = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True, timeout=20).stdout
    return sum(1 for line in out.splitlines() if line[:1].isdigit())


def ip_forward() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip()


def files_under(run_dir) -> list[str]:
    # capabilities.json (the capability trials' answers), btf-enum-*.json (enums parsed from the kernel's
    # BTF) and kallsyms.bin (the symbol table) are this boot's caches (kernel/bootcache.py), meant to stay;
    # NAME.PID is one being written by another run at the moment of the look
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs if not _boot_cache(f))


def _boot_cache(f) -> bool:
    return re.fullmatch(r"(capabilities\.json|kallsyms\.bin|btf-enum-\w+\.json)(\.\d+)?", f) is not None


def processes_of(run_dir) -> list[int]:
    """Live processes started with this run directory in their environment (a leaked child)."""
    marker = ("DNATTRACE_RUN_DIR=%s" % run_dir).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


class Host:
    """What the host looks like before; assert_same() compares after (with patience for shared parts)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.netns = netns_names()
        self.links = root_links()
        self.bpf_links = bpf_link_count()
        self.forward = ip_forward()

    def differences(self) -> list[str]:
        out = []
        new_ns = {n for n in netns_names() - self.netns if n.startswith(MINE)}
        if new_ns:
            out.append("namespaces left: %s" % sorted(new_ns))
        new_links = {n for n in root_links() - self.links if n.startswith(MINE)}
        if new_links:
            out.append("links left in the root namespace: %s" % sorted(new_links))
        if ip_forward() != self.forward:
            out.append("root ip_forward %s -> %s" % (self.forward, ip_forward()))
        left = [f for f in files_under(self.run_dir)]
        if left:
            out.append("state left: %s" % left)
        procs = processes_of(self.run_dir)
        if procs:
            out.append("processes left: %s" % procs)
        if bpf_link_count() > self.bpf_links:
            out.append("BPF links: %d before, %d after" % (self.bpf_links, bpf_link_count()))
        return out

    def assert_same(self, patience=5.0):
        end = time.monotonic() + patience
        while True:
            diff = self.differences()
            if not diff or time.monotonic() > end:
                break
            time.sleep(0.25)
        assert not diff, "; ".join(diff)


def kill_all(run_dir):
    """SIGKILL what a test left running (its process groups)."""
    for pid in processes_of(run_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
