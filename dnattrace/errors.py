"""User-facing errors: each one is printed as a single sentence with a defined exit code, never a traceback."""
import os

EXIT_OK = 0
EXIT_FAULT = 1        # diagnose: a fault was found and explained
EXIT_USAGE = 2        # bad input: unknown container, bad port, unknown namespace, ...
EXIT_CANNOT_OBSERVE = 3  # not root, no BTF, no tracefs, a probe the kernel refuses with no fallback


class DnattraceError(Exception):
    """An error a user can act on; str() is the one line that is printed."""

    exit_code = EXIT_USAGE


class UsageError(DnattraceError):
    exit_code = EXIT_USAGE


class CannotObserve(DnattraceError):
    exit_code = EXIT_CANNOT_OBSERVE


class CannotWrite(CannotObserve):
    """Output that cannot be written (a full disk): "cannot write FILE: No space left on device", exit 3."""


def stdout_name() -> str:
    """What stdout is, for that line: its path (/dev/full), else "standard output"."""
    try:
        where = os.readlink("/proc/self/fd/1")
    except OSError:
        return "standard output"
    return where if where.startswith("/") else "standard output (%s)" % where


def silence_stdout():
    """After a failed write, stdout's buffer still holds the lines that did not fit; flushing them at
    exit would fail again and print 'Exception ignored'. Point fd 1 at /dev/null so that flush succeeds."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
