"""Follower.run's loop, without the kernel: a stand-in poll hands it batches of finished journeys."""
import os
import signal

import pytest

from dnattrace.watch import session, journeys
from dnattrace import model


class _Batches(session.Follower):
    """A Follower whose poll() returns prepared batches and, on poll number `interrupt_at`, sends this
    process SIGINT while making its batch, as Ctrl-C would during a long poll."""

    def __init__(self, batches, interrupt_at=None, signals=1):     # no tracer: nothing of the kernel
        self.batches = list(batches)
        self.interrupt_at = interrupt_at
        self.signals = signals
        self.builder = journeys.JourneyBuilder(lambda t: True)
        self.new_drops = []
        self.polls = 0

    def poll(self, timeout_ms=100):
        self.polls += 1
        batch = self.batches.pop(0) if self.batches else []
        if self.polls == self.interrupt_at:
            for _ in range(self.signals):
                os.kill(os.getpid(), signal.SIGINT)
        return batch


def _pairs(n, tag):
    return [(model.Journey(skb=i, steps=[model.Step(ts_ns=i, point=model.RX)]), tag) for i in range(n)]


def test_a_signal_during_a_poll_ends_the_run_after_it_with_every_journey_told():
    f = _Batches([_pairs(3, "first"), _pairs(3, "second"), _pairs(3, "drained"), _pairs(3, "never")],
                 interrupt_at=2)
    told = []
    f.run(lambda j, c: told.append(c), duration=5, poll_ms=1, until_signal=True)
    # the interrupted poll's batch is told whole, then the run ends with one last poll that drains
    assert told == ["first"] * 3 + ["second"] * 3 + ["drained"] * 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C's handler is back"


def test_without_until_signal_ctrl_c_still_interrupts():
    f = _Batches([_pairs(3, "first"), _pairs(3, "second")], interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        f.run(lambda j, c: None, duration=5, poll_ms=1)


def test_a_second_signal_interrupts_at_once():
    """A watch that cannot finish its poll (stuck writing to a full pipe) must still stop on Ctrl-C."""
    f = _Batches([_pairs(3, "first"), _pairs(3, "second")], interrupt_at=1, signals=2)
    with pytest.raises(KeyboardInterrupt):
        f.run(lambda j, c: None, duration=5, poll_ms=1, until_signal=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
