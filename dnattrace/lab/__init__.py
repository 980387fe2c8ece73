"""Broken-on-purpose Docker-style hosts in network namespaces, each with its ground truth.

API (other modules, tests, demo and benchmarks use this; the CLI is dnattrace/lab/cli.py):

    from dnattrace import lab
    inst = lab.up("forwarding-off", prefix=None, docker=False)   # -> Instance; UsageError if already up
    r = inst.traffic(attempts=1, timeout=2.0)     # TrafficResult(ok, reason, attempts=[{ok, reason, status, seconds}])
    inst.syn_burst(count=10, timeout=0.2)         # {"sent", "connected", "pending"}: N SYNs fast, bounded
    lab.get(name) -> Instance; lab.instances() -> [Instance]; lab.down(name) -> bool; lab.down_all() -> [names]
    lab.scenarios.SCENARIOS / lab.scenarios.get(id) -> Scenario (id, description, cause, drop_function,
        drop_reason, drop_ns "host"|"container", docker, expect_ok, drop_delay)

Instance fields: name, scenario, docker (bool), token (interface-name prefix), client_ns (ip-netns name),
host_ns (ip-netns name, None = root namespace for --docker), container_ns (ip-netns name, or
/proc/PID/ns/net for --docker), container_name (--docker only), client_addr, target_addr, target_port
(what the client connects to), proto ("tcp"), container_addr, container_port, outside_if (host-side
interface facing the client, in host_ns), bridge (in host_ns), created, complete (True once `up` finished),
builder (pid of the `up` building it), objects (the undo log); status() -> "up" | "building" | "incomplete".

State lives in /run/dnattrace/lab/NAME.json; `down` works from it alone (after a crash too).
"""
from dnattrace.lab import scenarios  # noqa: F401
from dnattrace.lab.manage import down, down_all, get, instances, up  # noqa: F401
from dnattrace.lab.state import Instance  # noqa: F401
from dnattrace.lab.traffic import TrafficResult  # noqa: F401
