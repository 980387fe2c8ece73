"""A lab client's attempts in the background, bounded, while something watches: the TCP connects of
the client namespace (dnattrace's probe client), or the lab's own UDP client. Tests, the demo and the
accuracy bench drive a diagnosis with this, so every scenario is driven the same way."""
from __future__ import annotations

import contextlib
import threading

from dnattrace.diagnose import probeclient


@contextlib.contextmanager
def background(inst, count: int = 2, timeout: float = 2.0):
    """Run `count` attempts of instance `inst`'s client during the block; stopped (or joined) after it."""
    from dnattrace.lab import scenarios
    proc, thread = None, None
    # the lab's own client: UDP datagrams from one fixed source port, or a request whose large response
    # must be read whole (a fault after the handshake shows only there)
    if inst.proto == "udp" or scenarios.get(inst.scenario).large_response:
        thread = threading.Thread(target=inst.traffic, kwargs=dict(attempts=count, timeout=min(timeout, 1.5)),
                                  daemon=True)
        thread.start()
    else:
        proc = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, count, timeout)
    try:
        yield
    finally:
        probeclient.stop(proc)
        if thread is not None:
            thread.join(30)
