"""Stopping a long run (watch, drops, diagnose) between two polls instead of inside one."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def stop_signals(active=True):
    """SIGINT and SIGTERM append to the list yielded instead of raising. A poll decodes a whole batch of
    records into journeys before any is printed, so an interrupt inside it would lose that batch's
    journeys from the output while the summary counts them. A second signal interrupts at once (a watch
    stuck writing to a full pipe must still stop). Only in the main thread (where Python runs handlers);
    an ignored SIGINT (a background job) stays ignored."""
    caught: list[int] = []
    if not active or threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield caught
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
