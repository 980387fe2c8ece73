"""THE probe plan: for each point of a packet's journey, the programs of watch.bpf.o that can observe
it, in order of preference, with the capability each needs; and the netfilter positions.

`watch` (watch/tracer.py) loads what choose() picks and `doctor` prints the same choice, so what doctor
shows is what watch attaches. Adding a probe point is: its program in bpf/watch/watch.bpf.c, its record
in bpf/watch/watch.h (decoded by watch/abi.py), and one Point here.

Choices are made by trying (kernel/capabilities.py), never by kernel version; a probe that hooks a
function also needs the function in kallsyms (an inlined one cannot be hooked), and one on a tracepoint
needs the event in tracefs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional

from dnattrace.errors import CannotObserve
from dnattrace.kernel import kallsyms, loader, tracefs


@dataclass(frozen=True)
class Probe:
    """One way to observe a point: these programs together, if the kernel has `needs`."""
    programs: tuple[str, ...]
    needs: str                               # a capability name (capabilities.NAMES)
    label: str                               # what doctor prints
    functions: tuple[str, ...] = ()          # kernel functions hooked (fexit, kprobe)
    events: tuple[tuple[str, str], ...] = ()  # tracepoints attached (category, name)


@dataclass(frozen=True)
class Point:
    name: str
    probes: tuple[Probe, ...]
    required: bool = False       # watch cannot run without it
    why: str = ""                # what the point is evidence of (doctor --json)


def _tracepoint(programs, category, event):
    """The ladder for a tracepoint, in the order given: {capability: program}. direct_read means tp_btf
    with the packet's headers read by direct loads (cheaper, where the verifier allows them)."""
    ev = ((category, event),)
    labels = {"direct_read": "tp_btf/%s (headers by direct loads)" % event,
              "fib_tracepoint": "tp_btf/%s" % event, "fib6_tracepoint": "tp_btf/%s" % event, "tp_btf": "tp_btf/%s" % event,
              "raw_tp": "raw_tp/%s" % event, "tracepoint": "%s:%s" % (category, event)}
    return tuple(Probe((prog,), kind, labels[kind], events=ev) for kind, prog in programs.items())


def _function_exit(fexit_progs, kprobe_progs, function):
    return (Probe(fexit_progs, "fexit", "fexit/%s" % function, functions=(function,)),
            Probe(kprobe_progs, "kprobe", "kretprobe/%s" % function, functions=(function,)))


# ---------------------------------------------------------------- netfilter positions

HOOKS = {"PREROUTING": loader.NF_INET_PRE_ROUTING, "INPUT": loader.NF_INET_LOCAL_IN,
         "FORWARD": loader.NF_INET_FORWARD, "OUTPUT": loader.NF_INET_LOCAL_OUT,
         "POSTROUTING": loader.NF_INET_POST_ROUTING}


@dataclass(frozen=True)
class Position:
    """Where a netfilter link sits in a hook. The first and last position of every hook tell whether a
    packet got through it, and the NAT rewrite and conntrack state show as the difference between them.
    The positions inside tell where inside a hook something happened; every packet of every flow pays
    for each position (scripts/bench watch), so they are attached on request (--hook-detail)."""
    stage: str                    # model.STAGES: what the program reports in dt_event.stage
    program: str
    priority: int
    hooks: tuple[str, ...] = tuple(HOOKS)
    detail: bool = False          # only with --hook-detail


# INT_MIN and INT_MAX themselves are refused by the kernel (loader.NF_PRIO_MIN/MAX are one inside).
POSITIONS = (
    Position("first", "nf_first", loader.NF_PRIO_MIN),
    Position("conntrack", "nf_conntrack", -199, ("PREROUTING", "OUTPUT"), detail=True),   # after conntrack
    Position("dnat", "nf_dnat", -99, ("PREROUTING", "OUTPUT"), detail=True),              # after DNAT
    Position("snat", "nf_snat", 101, ("POSTROUTING",), detail=True),                      # after SNAT
    Position("last", "nf_last", loader.NF_PRIO_MAX),
)
# Programs with a twin that reads packet headers with direct loads (capability direct_read).
DIRECT_TWIN = {"nf_first": "nf_first_direct"}
# The priority each stage's link nominally sits at: a program does not know its own, and a link that
# found its place taken sits one or two further in. "filter" (0) is where iptables' filter table runs.
STAGE_PRIORITY = {p.stage: p.priority for p in POSITIONS} | {"filter": 0}


# Chain brackets: one program per slot (nf_chain0..5, DT_CHAIN_SLOTS in bpf/watch/watch.h), linked one
# below each priority where a namespace's base chains run (the kernel refuses a BPF link at a priority any
# other hook holds), on hooks where chains run at two priorities or more (with one, the hook's first and
# last positions bracket them already). A packet seen by the bracket of the group at P and by no later one
# was dropped by a chain of that group. Chains at adjacent priorities (-1 and 0) cannot be told apart this
# way: they form one group.
CHAIN_PROGRAMS = tuple("nf_chain%d" % i for i in range(6))


@dataclass(frozen=True)
class Bracket:
    hook: str
    family: int                   # 4 or 6: the chains differ per family (ip and ip6 tables; inet in both)
    slot: int                     # which nf_chain<slot> program
    group: int                    # the priority where the bracketed group of chains starts

    @property
    def program(self) -> str:
        return CHAIN_PROGRAMS[self.slot]

    @property
    def priority(self) -> int:
        return self.group - 1


def groups(hook: str, prios: list[int]) -> list[int]:
    """Where the bracketable groups of a hook's chains start: a chain priority one above which is free (no
    chain, no position link of watch, with or without --hook-detail). [] when the hook needs no brackets or
    has more groups than slots: the packet's window is then what the positions tell."""
    taken = {pr for h, _, pr in positions(hook_detail=True) if h == hook} | set(prios)
    out = [p for p in sorted(set(prios)) if p - 1 not in taken and loader.NF_PRIO_MIN < p - 1]
    return out if 2 <= len(out) <= len(CHAIN_PROGRAMS) else []


def brackets(priorities: dict[tuple[int, str], list[int]]) -> list[Bracket]:
    """The chain brackets for a namespace whose base chains run at `priorities` ((family, hook) -> sorted
    priorities)."""
    return [Bracket(hook, family, i, g) for (family, hook), prios in sorted(priorities.items())
            for i, g in enumerate(groups(hook, prios))]


def positions(hook_detail=False, direct_read=False) -> list[tuple[str, str, int]]:
    """(hook, program, priority) of every link to attach in a namespace."""
    out = []
    for hook in HOOKS:
        for p in POSITIONS:
            if hook in p.hooks and (hook_detail or not p.detail):
                prog = DIRECT_TWIN.get(p.program, p.program) if direct_read else p.program
                out.append((hook, prog, p.priority))
    return out


def _netfilter_label():
    inside = ", ".join("%s %d" % (p.stage, p.priority) for p in POSITIONS if p.detail)
    return ("netfilter links at the first and last position of every hook (with --hook-detail: %s), and one "
            "below each priority where base chains run (the chain that dropped a packet)" % inside)


# ---------------------------------------------------------------- the table

POINTS = (
    Point("device receive", _tracepoint({"direct_read": "rx_direct", "tp_btf": "rx_btf", "raw_tp": "rx_raw",
                                         "tracepoint": "rx_tp"}, "net", "netif_receive_skb"),
          required=True, why="where a packet enters a namespace, and whether it is followed"),
    Point("netfilter hooks", (Probe(tuple(sorted({p.program for p in POSITIONS})) + CHAIN_PROGRAMS, "netfilter_link",
                                    _netfilter_label()),
                              # where links are missing (before 6.4): every call of nf_hook_slow, entry =
                              # the hook's first position, return = its last (ACCEPT) or its verdict
                              Probe(("hook_fentry", "hook_fexit"), "fexit", "fentry+fexit/nf_hook_slow "
                                    "(entry = first, return = last or the verdict)", functions=("nf_hook_slow",)),
                              Probe(("hook_kprobe", "hook_kretprobe"), "kprobe", "kprobe+kretprobe/nf_hook_slow "
                                    "(entry = first, return = last or the verdict)", functions=("nf_hook_slow",))),
          why="each hook passed, with conntrack state and NAT rewrites"),
    Point("hook verdict", _function_exit(("verdict_fentry", "verdict_fexit"), ("verdict_kprobe", "verdict_kretprobe"),
                                         "nf_hook_slow"),
          why="a hook's drop verdict, which names the hook where netfilter links are missing"),
    Point("route decision", _tracepoint({"fib_tracepoint": "fib_btf", "raw_tp": "fib_raw"}, "fib", "fib_table_lookup"),
          why="the route lookup tied to the packet being routed: table, device, next hop"),
    Point("IPv6 route decision", _tracepoint({"fib6_tracepoint": "fib6_btf", "raw_tp": "fib6_raw"}, "fib6",
                                             "fib6_table_lookup"),
          why="the same for IPv6: each table's lookup (local, then main), device, next hop"),
    Point("route result", _function_exit(("route_fentry", "route_fexit"), ("route_kprobe", "route_kretprobe"),
                                         "ip_route_input_noref"),
          why="the route's input handler (ip_forward, ip_local_deliver, ip_error); its entry ties the fib "
              "lookups inside to the packet"),
    Point("drop", _tracepoint({"direct_read": "drop_direct", "tp_btf": "drop_btf", "tracepoint": "drop_tp"},
                              "skb", "kfree_skb"),
          required=True, why="the drop site and the kernel's drop reason"),
    Point("consume", _tracepoint({"tp_btf": "consume_btf", "tracepoint": "consume_tp"}, "skb", "consume_skb"),
          why="a packet delivered or freed normally"),
    Point("transmit", _tracepoint({"tp_btf": "xmit_btf"}, "net", "net_dev_xmit"),
          why="a packet leaving by a device"),
)
BY_NAME = {p.name: p for p in POINTS}


@dataclass
class Choice:
    """How one point will be observed: the probe chosen (None: unavailable) and those passed over."""
    point: str
    probe: Optional[Probe]
    tried: list[tuple[str, str]] = field(default_factory=list)   # [(label passed over, why)]

    @property
    def programs(self) -> tuple[str, ...]:
        return self.probe.programs if self.probe else ()

    def to_dict(self):
        p = self.probe
        return {"point": self.point, "probe": p.label if p else None, "needs": p.needs if p else None,
                "programs": list(self.programs), "why": BY_NAME[self.point].why if self.point in BY_NAME else "",
                "tried": [{"probe": label, "why": why} for label, why in self.tried]}


def _kernel_has_function(name) -> Optional[bool]:
    try:
        return kallsyms.has_function(name)
    except OSError:
        return None


def _has_event(category, name) -> Optional[bool]:
    return tracefs.has_event(category, name) if tracefs.is_mounted() else None


def _passed_over(probe: Probe, caps, has_function, has_event) -> Optional[str]:
    """Why `probe` cannot be used here, or None when it can."""
    if not caps.has(probe.needs):
        return "no %s" % probe.needs
    absent = [f for f in probe.functions if has_function(f) is False]
    if absent:
        return "not in kallsyms: %s" % ", ".join(absent)
    missing = ["%s:%s" % e for e in probe.events if has_event(*e) is False]
    if missing:
        return "no tracepoint %s" % ", ".join(missing)
    return None


# Where the hooks come from nf_hook_slow itself, its return already carries every verdict: the verdict
# point's own programs on the same function would report each drop twice.
COVERED = {"hook verdict": ("netfilter hooks", "nf_hook_slow")}


def hooks_by_links(choices: list[Choice]) -> bool:
    """Do the netfilter hooks come from BPF netfilter links (attached per namespace)?"""
    return any(c.point == "netfilter hooks" and c.probe and c.probe.needs == "netfilter_link" for c in choices)


def choose(caps, has_function: Optional[Callable] = None, has_event: Optional[Callable] = None) -> list[Choice]:
    """The first usable probe of every point, in the table's order. has_function(name) and
    has_event(category, name) answer True/False/None (None: cannot tell, so the probe is tried)."""
    has_function = has_function or _kernel_has_function
    has_event = has_event or _has_event
    out = []
    for point in POINTS:
        c = Choice(point.name, None)
        by, function = COVERED.get(point.name, (None, None))
        host = next((o for o in out if o.point == by and o.probe and function in o.probe.functions), None)
        if host is not None:
            c.probe = Probe((), host.probe.needs, "with the netfilter hooks (%s)" % host.probe.label)
            out.append(c)
            continue
        for probe in point.probes:
            why = _passed_over(probe, caps, has_function, has_event)
            if why is None:
                c.probe = probe
                break
            c.tried.append((probe.label, why))
        out.append(c)
    return out


def require(choices: list[Choice]):
    """CannotObserve naming what is missing when a point watch cannot do without has no probe."""
    missing = [c for c in choices if c.probe is None and BY_NAME[c.point].required]
    if missing:
        raise CannotObserve("this kernel cannot trace the %s point (%s)" % (
            missing[0].point, "; ".join("%s: %s" % t for c in missing for t in c.tried)))


def rule_verdict(choices: Optional[list[Choice]] = None) -> Choice:
    """Which chain and rule dropped a packet. With netfilter links: the chain group from brackets linked
    at each base chain's priority, the rule from counters and evaluation. Without (fexit on nft_do_chain /
    ipt_do_table is not implemented): the chain and rule from counters (iptables-save -c, nft -j, legacy
    tables) and the evaluation of counterless nft rules only; never a guess."""
    tools = [t for t in ("iptables-save", "nft") if shutil.which(t)]
    if not tools:
        return Choice("rule verdict", None, [("rule/policy counter differences", "neither iptables-save nor nft installed")])
    how = "rule/policy counter differences (%s) and evaluation of counterless nft rules" % ", ".join(tools)
    if choices is not None and hooks_by_links(choices):
        how = "chain: netfilter links bracketing each base chain's priority; rule: " + how
    else:
        how = "chain and rule from " + how + " (no per-packet chain: no netfilter links here)"
    return Choice("rule verdict", Probe((), "counters", how))
