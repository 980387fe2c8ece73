"""Shared test plumbing. Kernel tests need root; they never skip silently: a missing capability makes
them fail (or skip with the name of what is missing, via require())."""
import os
import signal

import pytest

# A shell starts a background job (`scripts/test &`, nohup) with SIGINT ignored, and every process it
# starts inherits that: the tests of Ctrl-C (watch's summary, the kill matrix, diagnose's exit 130)
# then wait for a signal that never lands and fail as timeouts. Put Python's own handler back, so that
# this process and the CLI processes it starts take SIGINT as a user's terminal would deliver it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# How many times slower than the development VM this machine runs the kernel tests: scripts/vm/run sets it
# for its emulated guests. Time windows (watch durations, client timeouts, waits) are scaled by it here,
# so the host keeps its short windows.
SLOW = float(os.environ.get("DNATTRACE_TEST_SLOW") or 1)


def slow(seconds: float) -> float:
    """A test's time window, scaled to this machine's speed (DNATTRACE_TEST_SLOW)."""
    return seconds * SLOW


def require(condition, what):
    """Skip with a message that names the missing capability (never a silent skip)."""
    if not condition:
        pytest.skip("missing capability: %s" % what)


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (CAP_BPF, CAP_NET_ADMIN); run scripts/test as root")


@pytest.fixture(scope="session")
def test_objects():
    """The test-only BPF objects (tests/bpf), compiled once per session into tests/bpf/build/: {name: path}."""
    import bpfobjs
    return bpfobjs.build()


@pytest.fixture(scope="session")
def caps():
    """What this kernel allows, probed once (dnattrace.capabilities; DNATTRACE_AVOID is honoured)."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root")
    from dnattrace.kernel import capabilities
    return capabilities.probe()


@pytest.fixture
def netns(root):
    """Factory for uniquely named network namespaces that are deleted after the test."""
    from dnattrace.netns import build as net
    made = []

    def make(tag="t"):
        name = net.unique("dtt%s" % tag)
        net.add_netns(name)
        made.append(name)
        return name

    yield make
    for name in made:
        net.del_netns(name)


@pytest.fixture
def lab_instance(root):
    """Factory: lab.up(scenario) with a unique prefix; every instance is brought down after the test,
    even when it fails."""
    from dnattrace import lab
    from dnattrace.netns import build as net
    made = []

    def up(scenario_id, docker=False):
        inst = lab.up(scenario_id, prefix=net.unique("tl"), docker=docker)
        made.append(inst.name)
        return inst

    yield up
    for name in made:
        lab.down(name)
