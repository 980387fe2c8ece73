"""Writing where a disk can fill up. A command's lines go to stdout (or a --pcap file) until a write fails
(ENOSPC, EIO, ...): then the failure is noted once, later lines are dropped, the run stops, the summary
goes to the terminal (stderr when stdout was the failing file) and the command ends with one line,
"cannot write FILE: No space left on device", exit 3. A broken pipe is not such a failure: the reader
left, and click ends the command quietly as before."""
from __future__ import annotations

import errno
import sys
from typing import Optional

from dnattrace.errors import CannotWrite, silence_stdout, stdout_name


def _is_pipe_closed(e: OSError) -> bool:
    return e.errno == errno.EPIPE


class Output:
    """stdout for a long run: line() until a write fails, summary() to the terminal in any case."""

    def __init__(self):
        self.failure: Optional[str] = None     # "cannot write FILE: reason", once a write failed
        self.stdout_failed = False

    def fail(self, name: str, e: OSError):
        if self.failure is None:
            self.failure = "cannot write %s: %s" % (name, e.strerror or e)

    def line(self, text: str):
        if self.stdout_failed:
            return
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except OSError as e:
            if _is_pipe_closed(e):
                raise
            self.stdout_failed = True
            self.fail(stdout_name(), e)
            silence_stdout()

    def summary(self, text: str):
        """The end of a run: to stdout, or to stderr when stdout is the file that failed."""
        if self.stdout_failed:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        else:
            self.line(text)

    def check(self):
        """At the end of the run: raise the one-line failure, if a write failed."""
        if self.failure:
            raise CannotWrite(self.failure)


class GuardedFile:
    """A file writer (the pcapng writer) whose write failures are noted in `out` instead of raised."""

    def __init__(self, writer, name: str, out: Output):
        self.writer, self.name, self.out = writer, name, out
        self.failed = False

    def write(self, *args):
        if self.failed:
            return
        try:
            self.writer.write(*args)
        except OSError as e:
            self.failed = True
            self.out.fail(self.name, e)

    def close(self):
        try:
            self.writer.close()
        except OSError as e:
            if not self.failed:
                self.out.fail(self.name, e)
            self.failed = True
