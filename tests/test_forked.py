"""run_apart: a look-up in a forked child hands back its result or its exception, leaves nothing behind
in this process, and a child that hangs is killed. No kernel features needed."""
import os
import signal
import sys
import time

import pytest

from dnattrace import forked
from dnattrace.errors import DnattraceError, EXIT_USAGE, UsageError

_touched = False


def _answer(x, y=0):
    global _touched
    _touched = True         # a side effect of the look-up: must stay in the child
    return {"pid": os.getpid(), "sum": x + y, "nested_pid": forked.run_apart(os.getpid)}


def _refuse(kind, message):
    raise kind(message)


class Foreign(Exception):
    """An exception of a type from outside dnattrace (like docker.errors or pyroute2's)."""


def _pid_then(path, what):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    if what == "hang":
        time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def _gone(pid):
    """The process is neither running nor a zombie waiting to be reaped."""
    return not os.path.exists("/proc/%d" % pid)


def test_result_comes_back_from_a_child_that_is_gone_afterwards():
    out = forked.run_apart(_answer, 40, y=2)
    assert out["sum"] == 42
    assert out["pid"] != os.getpid(), "it ran in another process"
    assert out["nested_pid"] == out["pid"], "inside a child, run_apart calls fn where it is"
    assert not _touched, "the child's side effects stay in the child"
    assert _gone(out["pid"])


@pytest.mark.parametrize("kind", [UsageError, DnattraceError, ValueError])
def test_exception_keeps_its_type_and_message(kind):
    with pytest.raises(kind) as caught:
        forked.run_apart(_refuse, kind, "no container named nope")
    assert type(caught.value) is kind and str(caught.value) == "no container named nope"
    if issubclass(kind, DnattraceError):
        assert caught.value.exit_code == EXIT_USAGE
    assert any("in the look-up child process" in n for n in caught.value.__notes__)


def test_foreign_exception_comes_back_named_without_its_type():
    with pytest.raises(forked.ChildFailed) as caught:
        forked.run_apart(_refuse, Foreign, "engine said no")
    assert str(caught.value) == "test_forked.Foreign: engine said no"


def test_a_result_that_does_not_pickle_is_a_clear_error():
    with pytest.raises(forked.ChildFailed, match=r"cannot send the result of \S*<lambda> back"):
        forked.run_apart(lambda: (lambda: 0))


def test_hanging_child_is_killed_after_the_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(DnattraceError, match=r"_pid_then did not answer within 0\.5 s") as caught:
        forked.run_apart(_pid_then, str(pid_file), "hang", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert type(caught.value) is DnattraceError
    assert _gone(int(pid_file.read_text()))


def test_child_that_dies_without_answering(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(DnattraceError, match="ended without an answer .killed by signal SIGKILL"):
        forked.run_apart(_pid_then, str(pid_file), "die")
    assert _gone(int(pid_file.read_text()))


def test_pending_output_is_not_printed_twice(capfd):
    sys.stdout.write("before the fork")     # buffered, not yet flushed
    forked.run_apart(print, "from the child")
    sys.stdout.flush()
    assert capfd.readouterr().out == "before the forkfrom the child\n"


def test_lookup_runs_apart_only_once_the_process_stays_light(monkeypatch):
    assert forked.lookup(os.getpid) == os.getpid(), "one-shot commands look up right here"
    monkeypatch.setattr(forked, "_light", True)      # what stay_light() does, undone after the test
    pid = forked.lookup(os.getpid)
    assert pid != os.getpid() and _gone(pid)
