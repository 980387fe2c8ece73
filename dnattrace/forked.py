"""Short look-ups run in a forked child process that hands back plain data.

Why: `dnattrace watch` (and `drops`) are long-lived and must stay under 60 MB resident (peak, VmHWM).
The Docker SDK (requests, urllib3, ssl, charset_normalizer: about 16 MB) and pyroute2 (about 20 MB) are
needed there only for short look-ups: what a port or container resolves to, which namespaces Docker
runs, a namespace's addresses. Imported in the watch process they would stay for its whole life; run
apart, the imports and whatever the look-up allocates stay in a child that ends (os._exit) as soon as it
has answered, and the watch process only receives the pickled result.

run_apart(fn, *args, **kw) returns what fn returned, or raises what fn raised with the same type and
message (so UsageError / DnattraceError stay one-line errors with their exit code). An exception of a
type from outside dnattrace and the standard library (docker.errors, pyroute2's) would import its
package when unpickled, so it comes back as a ChildFailed naming the type instead. A child that does not
answer within the timeout is killed and a DnattraceError says so. Inside a child, run_apart just calls
fn: the child is already the place where the imports may go.

Readers that every command shares (netns.docker_netns, system.links.links) use lookup(): in a child
only once the command said stay_light() (watch, drops). One-shot commands (diagnose, demo) need pyroute2
and the SDK for their evidence anyway, so there a child would only cost time (an import per child).
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
import traceback

from dnattrace.errors import DnattraceError

# A stuck Docker engine or netlink must not hang a command for ever; a healthy look-up takes 0.1-0.3 s
# here, but 10-40 s on an emulated kernel (the kernel matrix's guests, three at once on two cores).
TIMEOUT_S = 90.0
_in_child = False
_light = False      # stay_light() was called: lookup() runs apart


def stay_light():
    """This process is long-lived (watch, drops) and has a memory budget: from now on lookup() runs its
    look-ups in a child process."""
    global _light
    _light = True


def lookup(fn, *args, timeout: float = TIMEOUT_S, **kw):
    """fn(*args, **kw): in a child (run_apart) when this process stays light, else right here."""
    if _light:
        return run_apart(fn, *args, timeout=timeout, **kw)
    return fn(*args, **kw)


class ChildFailed(Exception):
    """An exception of a type the parent does not import; str() is "Type: message"."""


def run_apart(fn, *args, timeout: float = TIMEOUT_S, **kw):
    """fn(*args, **kw) in a forked child; its result (or its exception) comes back over a pipe."""
    if _in_child:
        return fn(*args, **kw)
    what = getattr(fn, "__qualname__", repr(fn))
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)      # else the child's own flush would print the parent's pending output twice
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(w, what, fn, args, kw)     # never returns
    os.close(w)
    try:
        data = _read(r, timeout, what)
        _, status = os.waitpid(pid, 0)
    except BaseException:     # a timeout, Ctrl-C: the child must not outlive the question
        _kill(pid)
        raise
    finally:
        os.close(r)
    if not data:
        raise DnattraceError("the look-up %s ended without an answer (%s)" % (what, _how(status)))
    ok, value = pickle.loads(data)
    if ok:
        return value
    raise value


def _child(w, what, fn, args, kw):
    global _in_child
    _in_child = True
    try:
        # Ctrl-C and SIGTERM are the parent's to handle: it kills this child when it gives up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            answer = (True, fn(*args, **kw))
        except BaseException as e:
            answer = (False, _portable(e))
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:      # a result that does not pickle: a bug worth a clear message
            data = pickle.dumps((False, ChildFailed("cannot send the result of %s back: %s: %s"
                                                    % (what, type(e).__name__, e))))
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    finally:
        os._exit(0)


def _portable(e: BaseException) -> BaseException:
    """e itself when the parent can unpickle it without importing anything heavy, else a ChildFailed.
    The child's traceback goes along as a note (shown with --verbose, never in the one-line message)."""
    out = None
    module = type(e).__module__
    if module == "builtins" or module.split(".")[0] == __name__.split(".")[0]:
        try:
            pickle.loads(pickle.dumps(e))
            out = e
        except Exception:   # an exception class whose arguments do not round-trip
            pass
    if out is None:
        out = ChildFailed("%s.%s: %s" % (module, type(e).__qualname__, e))
    out.add_note("in the look-up child process:\n" + "".join(traceback.format_exception(e)).rstrip())
    return out


def _read(fd, timeout, what) -> bytes:
    """Everything the child writes, up to its end of the pipe closing; DnattraceError after timeout s."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DnattraceError("the look-up %s did not answer within %g s (is the Docker engine or netlink "
                                 "stuck?); stopped it" % (what, timeout))
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _how(status) -> str:
    if os.WIFSIGNALED(status):
        return "killed by signal %s" % signal.Signals(os.WTERMSIG(status)).name
    return "exit status %d" % os.waitstatus_to_exitcode(status)


def _flush(stream):
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):     # closed or replaced streams
        pass
