"""What the running kernel lets dnattrace do, learned by trying, and the attach plan that follows from it.

Each capability is decided by attempting the real thing (load and attach one tiny program from
probes.bpf.o, create a link, create a map, read a file), never from the kernel version: distributions
backport and disable features freely (the development kernel is 6.18 with no kprobes and no fentry).
`probe()` runs the trials once per process; kernel/plan.py turns them into the probe chosen for each
point of a packet's journey.
"""
from __future__ import annotations

import atexit
import contextlib
import errno as errno_mod
import os
import threading
import time
from dataclasses import dataclass

from dnattrace.kernel import bootcache, loader, objects, preflight, tracefs
from dnattrace.errors import CannotObserve

PROBES_OBJECT = objects.path("probes")
KALLSYMS = "/proc/kallsyms"

# Trial order, which is also the order doctor prints them in.
NAMES = ("btf", "tracefs", "kallsyms", "tp_btf", "raw_tp", "tracepoint", "fentry", "fexit", "kprobe",
         "netfilter_link", "fib_tracepoint", "fib6_tracepoint", "direct_read", "ringbuf", "drop_reason_enum")



@dataclass(frozen=True)
class Capability:
    name: str
    ok: bool
    detail: str = ""
    ms: float = 0.0
    value: object = None      # e.g. the number of drop reasons

    def to_dict(self):
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "ms": round(self.ms, 1),
                "value": self.value}


class Capabilities:
    """The trial results, by name, in trial order."""

    def __init__(self, items, total_ms=0.0, cached=False):
        self._items = {c.name: c for c in items}
        self.total_ms = total_ms
        self.cached = cached      # the BPF trials' answers come from this boot's earlier run

    def has(self, name):
        c = self._items.get(name)
        return bool(c and c.ok)

    def __getitem__(self, name):
        return self._items[name]

    def __iter__(self):
        return iter(self._items.values())

    def kfree_skb_kinds(self):
        """Which kinds of kfree_skb tracepoint attach here (the trials use kfree_skb)."""
        return [k for k in ("tp_btf", "raw_tp", "tracepoint") if self.has(k)]

    def missing_minimum(self):
        """What is missing of the minimum dnattrace needs (BTF and some kfree_skb tracepoint); [] if none."""
        missing = [] if self.has("btf") else ["BTF"]
        if not self.kfree_skb_kinds():
            missing.append("a kfree_skb tracepoint (tp_btf, raw_tp or classic)")
        return missing


# ---------------------------------------------------------------- trials

def _errno_text(e):
    """'EPERM (Operation not permitted)' for an OSError/BpfError, else the message's first line."""
    err = getattr(e, "errno", 0)
    if err:
        return "%s (%s)" % (errno_mod.errorcode.get(err, str(err)), os.strerror(err))
    return str(e).splitlines()[0] if str(e) else type(e).__name__


_closing: list[threading.Thread] = []


def _release(obj):
    """Close a trial's object in the background: detaching a classic tracepoint waits for an RCU grace
    period (50-80 ms here) and nothing depends on it being gone at once. Joined at exit."""
    t = threading.Thread(target=obj.close, name="dnattrace-release", daemon=True)
    t.start()
    _closing.append(t)


@atexit.register
def _join_released():
    for t in _closing:
        t.join()
    _closing.clear()


# Loaded together first (_preload): most of a trial's time is libbpf parsing the kernel's BTF for its object
# (~30 ms each here), and these load wherever dnattrace runs at all (each is still attached alone). If the
# object is refused, each is loaded alone, as the others always are: fentry and fexit, which kernels
# without them (6.18 here) refuse to load.
GROUPED = {"tp_btf": "probe_tp_btf", "raw_tp": "probe_raw_tp", "tracepoint": "probe_tracepoint",
           "kprobe": "probe_kprobe", "netfilter_link": "probe_netfilter", "fib_tracepoint": "probe_fib",
           "fib6_tracepoint": "probe_fib6", "direct_read": "probe_direct_read"}
_preloaded: dict[str, loader.BpfObject] = {}     # program -> the object _preload loaded it in


def _as_netfilter(p):
    p.set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)


_SETUP = {"probe_netfilter": _as_netfilter}


@contextlib.contextmanager
def _preload(names):
    """The GROUPED programs of these trials loaded in one object for the block (none when it is refused)."""
    progs = [GROUPED[n] for n in names if n in GROUPED]
    obj = None
    if len(progs) > 1:
        try:
            obj = loader.BpfObject(PROBES_OBJECT).only(*progs)
            for prog in progs:
                if prog in _SETUP:
                    _SETUP[prog](obj.program(prog))
            obj.load()
            _preloaded.update((prog, obj) for prog in progs)
        except loader.BpfError:     # one refused (or missing) here: each trial loads its own
            pass
    try:
        yield
    finally:
        _preloaded.clear()
        if obj is not None:
            _release(obj)


def _try_program(prog, attach=None, setup=None):
    """Load only `prog` from probes.bpf.o (unless _preload did) and attach it; (True, what was attached) or
    raise."""
    if prog in _preloaded:
        p = _preloaded[prog].program(prog)
        try:
            link = attach(p) if attach else p.attach()
        except loader.BpfError as e:
            raise _TrialFailed("attach refused: %s" % _errno_text(e)) from None
        return True, "attached " + link.description
    obj = loader.BpfObject(PROBES_OBJECT).only(prog)
    try:
        p = obj.program(prog)
        if setup:
            setup(p)
        try:
            obj.load()
        except loader.BpfError as e:
            raise _TrialFailed("load refused: %s%s" % (_errno_text(e), _verifier_hint(e))) from None
        try:
            link = attach(p) if attach else p.attach()
        except loader.BpfError as e:
            raise _TrialFailed("attach refused: %s" % _errno_text(e)) from None
        return True, "attached " + link.description
    finally:
        _release(obj)


def _verifier_hint(e):
    lines = [l for l in e.verifier_message().splitlines() if "ulimit" not in l]
    return "; verifier: %s" % lines[-1] if lines and e.errno not in (errno_mod.EPERM,) else ""


class _TrialFailed(Exception):
    """A trial's negative answer, with the detail to show."""


def _trial_btf():
    if not preflight.has_btf():
        return False, "%s is missing: the kernel needs CONFIG_DEBUG_INFO_BTF" % preflight.BTF_PATH
    with open(preflight.BTF_PATH, "rb") as f:
        magic = f.read(2)
    if magic != b"\x9f\xeb":
        return False, "%s is not BTF" % preflight.BTF_PATH
    return True, "%s (%d KiB)" % (preflight.BTF_PATH, os.path.getsize(preflight.BTF_PATH) // 1024)


def _trial_tracefs():
    try:
        return True, "mounted at %s" % tracefs.ensure()
    except CannotObserve as e:
        return False, str(e)


def _trial_kallsyms():
    with open(KALLSYMS) as f:
        for _ in range(50):
            line = f.readline()
            if not line:
                break
            if int(line.split()[0], 16):
                return True, "addresses visible"
    return False, "addresses read as zero (not root, or kernel.kptr_restrict=2)"


def _trial_kprobe():
    try:
        return _try_program("probe_kprobe")
    except _TrialFailed as e:
        where = os.path.join(tracefs.path(), "kprobe_events")
        extra = "" if os.path.exists(where) else "; %s is absent (CONFIG_KPROBE_EVENTS unset)" % where
        raise _TrialFailed(str(e) + extra) from None


def _trial_netfilter_link():
    return _try_program("probe_netfilter", setup=_as_netfilter,
                        attach=lambda p: p.attach_netfilter(loader.NF_INET_PRE_ROUTING, -399))


def _trial_ringbuf():
    fd = loader.create_map(loader.MAP_TYPE_RINGBUF, 0, 0, 4096)
    os.close(fd)
    return True, "ring buffer map created"


def _trial_drop_reason_enum():
    """Number of skb_drop_reason values: from BTF (dnattrace.btf), else from the kfree_skb format file."""
    try:
        from dnattrace.kernel import btf
        n = btf.enum_count("skb_drop_reason")
        return True, "%d values (BTF enum skb_drop_reason)" % n, n
    except Exception as e:      # no btf module yet, no BTF, or no such enum: try the tracepoint's table
        why = _errno_text(e)
    try:
        n = len(tracefs.drop_reasons())
    except OSError as e:
        return False, "not in BTF (%s) and no kfree_skb format file (%s)" % (why, _errno_text(e)), None
    if not n:
        return False, "no reason field in skb:kfree_skb (kernel predates drop reasons)", 0
    return True, "%d values (skb:kfree_skb format file)" % n, n


_TRIALS = {
    "btf": _trial_btf,
    "tracefs": _trial_tracefs,
    "kallsyms": _trial_kallsyms,
    "tp_btf": lambda: _try_program("probe_tp_btf"),
    "raw_tp": lambda: _try_program("probe_raw_tp"),
    "tracepoint": lambda: _try_program("probe_tracepoint"),
    "fentry": lambda: _try_program("probe_fentry"),
    "fexit": lambda: _try_program("probe_fexit"),
    "kprobe": _trial_kprobe,
    "netfilter_link": _trial_netfilter_link,
    "fib_tracepoint": lambda: _try_program("probe_fib"),
    "fib6_tracepoint": lambda: _try_program("probe_fib6"),
    # packet bytes read with plain loads (bpf_rdonly_cast to void): cheaper than a helper call per read
    "direct_read": lambda: _try_program("probe_direct_read"),
    "ringbuf": _trial_ringbuf,
    "drop_reason_enum": _trial_drop_reason_enum,
}


def run_trial(name):
    """Run one trial and time it; every failure becomes a 'no' with its reason, never an exception."""
    t0 = time.perf_counter()
    value = None
    try:
        res = _TRIALS[name]()
        ok, detail = res[0], res[1]
        value = res[2] if len(res) > 2 else None
    except _TrialFailed as e:
        ok, detail = False, str(e)
    except (loader.BpfError, OSError, ValueError) as e:
        ok, detail = False, _errno_text(e)
    return Capability(name, ok, detail, (time.perf_counter() - t0) * 1000, value)


_cache: Capabilities | None = None
_cache_lock = threading.Lock()


# Capabilities to treat as refused without trying them (comma-separated names): to work around a kernel
# whose verifier accepts a program that then misbehaves, and to run the fallbacks on a kernel that
# would not need them (the tests do).
AVOID_ENV = "DNATTRACE_AVOID"


def avoided():
    names = {n.strip() for n in os.environ.get(AVOID_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(NAMES))
    if unknown:
        raise CannotObserve("%s names unknown capabilities: %s (known: %s)"
                            % (AVOID_ENV, ", ".join(unknown), ", ".join(NAMES)))
    return names


# What a kernel allows does not change while it runs: the trials' answers are kept for this boot (keyed
# by boot id, kernel build, the trial list, the avoided set and the trial object), so watch and diagnose
# start without them (40-70 ms here with the grouped trials in one object; 150-300 ms each alone). The
# cheap environment checks (BTF file, tracefs mount, kallsyms addresses) are made again each time;
# doctor always tries everything and renews the file.
BOOT_CACHE = "capabilities.json"     # in RUN_DIR (kernel/bootcache.py)
LIVE = ("btf", "tracefs", "kallsyms")


def _boot_key() -> list:
    try:
        obj = os.stat(PROBES_OBJECT).st_mtime_ns
    except OSError:
        obj = 0
    return bootcache.boot_key(list(NAMES), sorted(os.environ.get(AVOID_ENV, "").split(",")), obj)


def _from_boot_cache() -> Capabilities | None:
    items = bootcache.load(BOOT_CACHE, _boot_key())
    if not isinstance(items, list):
        return None
    cached = {c["name"]: Capability(c["name"], c["ok"], c["detail"], c["ms"], c.get("value")) for c in items}
    if set(cached) != set(NAMES):
        return None
    for name in LIVE:
        cached[name] = run_trial(name)
    return Capabilities([cached[n] for n in NAMES], 0.0, cached=True)


def _to_boot_cache(caps: Capabilities):
    bootcache.store(BOOT_CACHE, _boot_key(), [c.to_dict() for c in caps])


def probe(refresh=False):
    """Try everything once per process, and once per boot unless refresh (doctor). Needs root to say
    anything but 'no'.

    The BTF enum is parsed in Python (~100 ms) on a thread while the BPF trials, which wait in the
    kernel with the GIL released, run on this one.
    """
    global _cache
    with _cache_lock:
        if _cache is not None and not refresh:
            return _cache
        if not refresh and os.geteuid() == 0:
            _cache = _from_boot_cache()
            if _cache is not None:
                return _cache
        t0 = time.perf_counter()
        results = {n: Capability(n, False, "not tried: listed in %s" % AVOID_ENV) for n in avoided()}
        side = threading.Thread(target=lambda: results.update(drop_reason_enum=run_trial("drop_reason_enum")))
        parallel = "drop_reason_enum" not in results
        # trials that fail print through libbpf's callback: a signal then waits until they are done
        # (loader.held_signals), and the threads started here (the side thread, the releases) keep it blocked
        with loader.held_signals():
            if parallel:
                side.start()
            todo = [n for n in NAMES if n not in results and n != "drop_reason_enum"]
            with _preload(todo):
                for name in todo:
                    results[name] = run_trial(name)
            if parallel:
                side.join()
        _cache = Capabilities([results[n] for n in NAMES], (time.perf_counter() - t0) * 1000)
        if os.geteuid() == 0:
            _to_boot_cache(_cache)
        return _cache
