"""What the running kernel lets dnattrace do, learned by trying, and the attach plan that follows from it.

Each capability is decided by attempting the real thing (load and attach one tiny program from
probes.bpf.o, create a link, create a map, read a file), never from the kernel version: distributions
backport and disable features freely (the development kernel is 6.18 with no kprobes and no fentry).
`probe()` runs the trials once per process; `plan(caps)` turns them into the probe chosen for each point
of a packet's journey (DESIGN.md, "Kernel side"), with the reason when a point cannot be observed.
"""
from __future__ import annotations

import atexit
import errno as errno_mod
import os
import shutil
import threading
import time
from dataclasses import dataclass, field

from dnattrace.kernel import loader, objects, preflight, tracefs
from dnattrace.errors import CannotObserve

PROBES_OBJECT = objects.path("probes")
KALLSYMS = "/proc/kallsyms"

# Trial order, which is also the order doctor prints them in.
NAMES = ("btf", "tracefs", "kallsyms", "tp_btf", "raw_tp", "tracepoint", "fentry", "fexit", "kprobe",
         "netfilter_link", "fib_tracepoint", "direct_read", "ringbuf", "drop_reason_enum")

HOOKS = {"PREROUTING": loader.NF_INET_PRE_ROUTING, "INPUT": loader.NF_INET_LOCAL_IN,
         "FORWARD": loader.NF_INET_FORWARD, "OUTPUT": loader.NF_INET_LOCAL_OUT,
         "POSTROUTING": loader.NF_INET_POST_ROUTING}
# BPF netfilter link priorities per hook (DESIGN.md). The edges (first, last) are always probed; the
# positions inside (after conntrack, after DNAT; after SNAT in POSTROUTING) only with --hook-detail,
# since every packet pays for each position. INT_MIN and INT_MAX themselves are refused by the kernel.
EDGE_PRIORITIES = (loader.NF_PRIO_MIN, loader.NF_PRIO_MAX)
INSIDE_PRIORITIES = {"PREROUTING": (-199, -99), "OUTPUT": (-199, -99), "POSTROUTING": (101,)}


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

    def __init__(self, items, total_ms=0.0):
        self._items = {c.name: c for c in items}
        self.total_ms = total_ms

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


def _try_program(prog, attach=None, setup=None):
    """Load only `prog` from probes.bpf.o and attach it; (True, what was attached) or raise."""
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
    def as_netfilter(p):
        p.set_type(loader.PROG_TYPE_NETFILTER, loader.ATTACH_NETFILTER)
    return _try_program("probe_netfilter", setup=as_netfilter,
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


def probe(refresh=False):
    """Try everything once per process (cached). Needs root to say anything but 'no'.

    The BTF enum is parsed in Python (~100 ms) on a thread while the BPF trials, which wait in the
    kernel with the GIL released, run on this one.
    """
    global _cache
    with _cache_lock:
        if _cache is not None and not refresh:
            return _cache
        t0 = time.perf_counter()
        results = {n: Capability(n, False, "not tried: listed in %s" % AVOID_ENV) for n in avoided()}
        side = threading.Thread(target=lambda: results.update(drop_reason_enum=run_trial("drop_reason_enum")))
        parallel = "drop_reason_enum" not in results
        if parallel:
            side.start()
        for name in NAMES:
            if name not in results and name != "drop_reason_enum":
                results[name] = run_trial(name)
        if parallel:
            side.join()
        _cache = Capabilities([results[n] for n in NAMES], (time.perf_counter() - t0) * 1000)
        return _cache


# ---------------------------------------------------------------- the attach plan

@dataclass
class PlanEntry:
    """How one journey point will be observed: the chosen probe (None: unavailable) and what was tried."""
    point: str
    probe: str | None
    kind: str | None = None          # tp_btf, raw_tp, tracepoint, netfilter_link, fexit, kretprobe, counters
    targets: tuple = ()              # tracepoint / function names, or netfilter priorities
    why: str = ""                    # "unavailable: ..." when probe is None
    tried: list = field(default_factory=list)   # [(preferred probe passed over, why)]

    def to_dict(self):
        return {"point": self.point, "probe": self.probe, "kind": self.kind, "targets": list(self.targets),
                "why": self.why, "tried": [{"probe": p, "why": w} for p, w in self.tried]}


def _no(caps, name):
    """Why an option was passed over, in a few words (the capability's detail says more)."""
    return "no %s" % name


class _Planner:
    """Walks each point's options in DESIGN.md's order and keeps the first the trials allow."""

    def __init__(self, caps, kernel_has_function=None, has_event=None):
        self.caps = caps
        self._func = kernel_has_function or _kernel_has_function
        self._event = has_event or _has_event

    def tracepoint(self, point, category, names):
        """tp_btf, then raw_tp, then the classic tracepoint, for tracepoints `category:name...`."""
        tried = []
        missing = [n for n in names if self._event(category, n) is False]
        if missing:
            return PlanEntry(point, None, why="unavailable: no tracepoint %s" % ", ".join(
                "%s:%s" % (category, n) for n in missing))
        for kind in ("tp_btf", "raw_tp", "tracepoint"):
            if self.caps.has(kind):
                probe = " + ".join(("%s:%s" % (category, n)) if kind == "tracepoint" else "%s/%s" % (kind, n)
                                   for n in names)
                return PlanEntry(point, probe, kind, tuple(names), tried=tried)
            tried.append((kind, _no(self.caps, kind)))
        return PlanEntry(point, None, why="unavailable: no kind of tracepoint attaches", tried=tried)

    def function_exit(self, point, funcs, tried):
        """fexit, then kretprobe, on every function in funcs (their return value is the answer)."""
        for kind in ("fexit", "kprobe"):
            label = "fexit" if kind == "fexit" else "kretprobe"
            probe = " + ".join("%s/%s" % (label, f) for f in funcs)
            if not self.caps.has(kind):
                tried.append((probe, _no(self.caps, kind)))
                continue
            absent = [f for f in funcs if self._func(f) is False]
            if absent:
                tried.append((probe, "not in kallsyms: %s" % ", ".join(absent)))
                continue
            return PlanEntry("", probe, label, tuple(funcs), tried=tried)
        return None

    def netfilter(self, hook):
        point = "netfilter %s" % hook
        prios = tuple(sorted(EDGE_PRIORITIES + INSIDE_PRIORITIES.get(hook, ())))
        tried = []
        if self.caps.has("netfilter_link"):
            inside = INSIDE_PRIORITIES.get(hook)
            text = "netfilter link %s at first, last%s" % (
                hook, " (%s with --hook-detail)" % ", ".join(str(p) for p in inside) if inside else "")
            return PlanEntry(point, text, "netfilter_link", prios)
        tried.append(("netfilter link", _no(self.caps, "netfilter_link")))
        e = self.function_exit(point, ["nf_hook_slow"], tried)
        if e:
            e.point = point
            return e
        return PlanEntry(point, None, why="unavailable: no netfilter link and no way to hook nf_hook_slow",
                         tried=tried)

    def route(self):
        """What watch does: the fib lookup tied to the packet (every kernel with tracepoints), plus the
        route input result (dst->input: ip_forward, ip_local_deliver, ip_error) where fexit/kretprobe
        on ip_route_input_noref work."""
        point, tried = "route decision", []
        fib = self.tracepoint(point, "fib", ["fib_table_lookup"])
        result = self.function_exit(point, ["ip_route_input_noref"], tried)
        if fib.probe:
            fib.probe += (" + %s (result)" % result.probe) if result else " + forwarding sysctl"
            fib.tried = tried + fib.tried
            return fib
        if result:
            result.point = point
            return result
        fib.tried = tried + fib.tried
        return fib

    def receive(self):
        """Every packet on the machine passes here, so how its headers are read matters (watch.bpf.c)."""
        e = self.tracepoint("device receive", "net", ["netif_receive_skb"])
        if e.kind == "tp_btf":
            if self.caps.has("direct_read"):
                e.probe += " (headers by direct loads)"
            else:
                e.tried.append(("direct header loads", _no(self.caps, "direct_read")))
        return e

    def rule_verdict(self):
        """Which rule dropped a packet comes from rule and policy counter differences read before and
        after (diagnose); fexit on nft_do_chain/ipt_do_table is not implemented."""
        point = "rule verdict"
        tools = [t for t in ("iptables-save", "nft") if shutil.which(t)]
        if tools:
            return PlanEntry(point, "rule/policy counter differences (%s)" % ", ".join(tools), "counters",
                             tuple(tools))
        return PlanEntry(point, None, why="unavailable: neither iptables-save nor nft is installed")

    def all(self):
        entries = [self.receive()]
        entries += [self.netfilter(h) for h in HOOKS]
        entries += [self.route(), self.rule_verdict(),
                    self.tracepoint("drop", "skb", ["kfree_skb"]),
                    self.tracepoint("done / delivered", "skb", ["consume_skb"]),
                    self.tracepoint("egress device", "net", ["net_dev_queue", "net_dev_xmit"])]
        return entries


def plan(caps, kernel_has_function=None, has_event=None):
    """The attach plan: one PlanEntry per journey point, in DESIGN.md's order of preference.

    kernel_has_function(name) and has_event(category, name) answer True/False/None (None: cannot tell);
    by default they read /proc/kallsyms and tracefs.
    """
    return _Planner(caps, kernel_has_function, has_event).all()


_symbols: set | None = None


def _kernel_has_function(name):
    """Whether a kernel function is in /proc/kallsyms (an inlined one cannot be hooked); None if unreadable."""
    global _symbols
    if _symbols is None:
        try:
            with open(KALLSYMS) as f:
                _symbols = {parts[2] for parts in map(str.split, f) if parts[1] in "tT"}
        except OSError:
            return None
    return name in _symbols


def _has_event(category, name):
    if not tracefs.is_mounted():
        return None
    return tracefs.has_event(category, name)
