"""The vocabulary of a decision replay, shared by the engine and the family modules.

A family module replays one kind of kernel decision (a route lookup, a netfilter verdict, a neighbour
resolution, ...) on the facts of one failure and returns a Match: the explanation, the object that holds
the wrong input, the fix for that object, and a Replay that records how each input read compared with the
cause. An input that contradicts the cause makes the whole cause go away (Replay.contradict): a cause is
named only when every piece of evidence agrees with it. Inputs that agree raise the confidence; inputs that
could not be read lower it and are said (Replay.unknown).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from dnattrace.evidence.firewall import CounterMove

if TYPE_CHECKING:
    from dnattrace.diagnose.facts import Facts

PERSIST = "persist it in /etc/sysctl.d/ (e.g. /etc/sysctl.d/99-dnattrace.conf) so it survives a reboot"


class Replay:
    """How the inputs of one replayed decision compare with a cause."""

    def __init__(self):
        self.got = self.total = 0.0
        self.evidence: list[str] = []
        self.unread: list[str] = []         # inputs the replay needed and could not read
        self.contradiction = ""             # the first input that refutes the cause ("" while none does)

    def add(self, weight: float, present, line: str = ""):
        """One input the cause expects: present raises the confidence; absent lowers it."""
        self.total += weight
        if present:
            self.got += weight
            if line:
                self.evidence.append(line)

    def note(self, line: str):
        """Evidence shown for context that does not weigh either way."""
        if line:
            self.evidence.append(line)

    def unknown(self, weight: float, what: str):
        """An input the replay needs that this host or kernel did not give: said, and it costs confidence."""
        self.total += weight
        self.unread.append(what)

    def contradict(self, line: str):
        """The evidence refutes the cause: the engine removes it and lists `line` among what was ruled out."""
        self.contradiction = self.contradiction or line

    @property
    def value(self) -> float:
        return self.got / self.total if self.total else 0.0


@dataclass
class Match:
    score: Replay
    explanation: str
    fix: Optional[list[str]] = None
    fix_note: str = ""
    rule: Optional[CounterMove] = None
    workaround: bool = False        # the fix lets the traffic through without curing the cause
    obj: str = ""                   # the object that holds the wrong input ("sysctl ... in host", "neighbour ...")

    def at(self, obj: str) -> "Match":
        """The match, naming the object that holds the wrong input."""
        self.obj = obj
        return self


@dataclass(frozen=True)
class Cause:
    """One entry of a family module: `match` replays the decision; `defers_to` names causes that explain the
    same evidence more precisely (when one of them holds for the failure, this one is not named); `refute`
    says, when the evidence rules this cause out, why (shown as "ruled out")."""
    id: str
    title: str
    match: Callable[["Facts"], Optional[Match]]
    defers_to: tuple[str, ...] = ()
    refute: Optional[Callable[["Facts"], Optional[str]]] = None


@dataclass
class Finding:
    cause_id: str
    title: str
    confidence: float                   # 0..1: share of the replayed inputs that were read and agree
    explanation: str                    # plain words, with this case's devices and addresses
    evidence: list[str] = field(default_factory=list)   # "net.ipv4.conf.veth-ext.forwarding = 0", ...
    fix: Optional[list[str]] = None     # commands to run, in order; None when no command can fix it
    fix_note: str = ""                  # e.g. how to persist the fix, or an alternative
    rule: Optional[dict] = None         # {"table", "chain", "rule", "packets"} of the rule/policy that dropped
    netns: str = ""                     # name of the namespace where it happened ("host", a container)
    connections: int = 1                # failing connections this finding explains
    workaround: bool = False            # the fix works around the cause rather than curing it
    ruled_out: list[str] = field(default_factory=list)  # alternatives checked and refuted, and why
    object: str = ""                    # the object holding the wrong input
    unread: list[str] = field(default_factory=list)     # inputs the replay could not read
    share: str = ""                     # "3 of 40 connections over 5.0 s" when only some attempts failed

    def to_dict(self):
        return {k: v for k, v in asdict(self).items() if v is not None and v != "" and v != []}


def rule_dict(m: Optional[CounterMove]) -> Optional[dict]:
    return None if m is None else {"table": m.table, "chain": m.chain, "rule": m.rule, "packets": m.packets}
