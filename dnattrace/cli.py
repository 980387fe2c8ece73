"""The `dnattrace` command: a thin click group. Each subcommand lives in its own module and is imported
only when it runs, so start-up stays fast and features do not import each other through the CLI.

Errors a user can act on (DnattraceError) are printed as one line with their exit code; a traceback
is shown only with --verbose.
"""
import errno
import importlib
import logging
import os
import signal
import sys

import click

from dnattrace.errors import EXIT_CANNOT_OBSERVE, EXIT_USAGE, DnattraceError, silence_stdout, stdout_name

COMMANDS = {
    "doctor": "dnattrace.commands.doctor:doctor",
    "drops": "dnattrace.commands.drops:drops",
    "watch": "dnattrace.commands.watch:watch",
    "diagnose": "dnattrace.commands.diagnose:diagnose",
    "demo": "dnattrace.lab.demo:demo",
    "lab": "dnattrace.lab.cli:lab",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExample:\n  sudo dnattrace demo        # a broken lab host, diagnosed, removed\n"
                    "Shell completion (bash; zsh_source and fish_source likewise):\n"
                    "  eval \"$(_DNATTRACE_COMPLETE=bash_source dnattrace)\"")
@click.option("-v", "--verbose", count=True,
              help="-v: dnattrace's decisions (probes chosen and why, evidence); -vv: also libbpf's and other "
                   "libraries' debug output, and tracebacks.")
@click.pass_context
def cli(ctx, verbose):
    """Find where and why the kernel drops a packet (Docker DNAT, netfilter, routing)."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    setup_logging(verbose)


def setup_logging(verbose: int):
    """-v shows dnattrace's own decisions only; libbpf (relocation and ELF lines by the thousand),
    pyroute2, docker and urllib3 speak at -vv."""
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.ERROR,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    if verbose == 1:
        logging.getLogger("dnattrace").setLevel(logging.DEBUG)
        logging.getLogger("dnattrace.libbpf").setLevel(logging.WARNING)


_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout 60 dnattrace watch`, a service manager): stop as Ctrl-C would, so watch and drops
    still print their summary, and every probe and lab resource is released on the way out."""


def _sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    """Entry point: turns user errors into one line and an exit code, SIGTERM into Ctrl-C's clean stop.
    As the process's entry (argv None: the console script, python -m), SIGINT and SIGTERM are blocked
    once the command is over: Python's teardown puts their default actions back, and a signal then
    would kill a process whose work is done (a `lab up` that built its lab would look killed half-way,
    exit -15, under a loaded machine's timing). A caller inside a longer-lived process (the tests) keeps
    its signals."""
    signal.signal(signal.SIGTERM, _sigterm)
    if getattr(signal.getsignal(signal.SIGINT), "__module__", None) == "dnattrace":   # the start-up one (__init__.py)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _dispatch(argv)
    finally:
        if argv is None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


# Commands that a signal ends rather than interrupts (README, exit codes): also in their first moments,
# before their own handling is in place.
_STOPPED_BY_SIGNALS = ("watch", "drops")


def _stdout_closed() -> bool:
    """fd 1 closed (`>&-`): Python leaves sys.stdout None, and the next file opened would take fd 1."""
    if sys.stdout is None:
        return True
    try:
        os.fstat(1)
    except OSError:
        return True
    return False


def _interrupted(args, code: int) -> int:
    command = next((a for a in args if not a.startswith("-")), None)
    return 0 if command in _STOPPED_BY_SIGNALS else code


def _dispatch(argv):
    args = sys.argv[1:] if argv is None else argv
    traceback_wanted = "-vv" in args or args.count("-v") + args.count("--verbose") >= 2
    if argv is None and _stdout_closed():
        click.echo("dnattrace: cannot write the output: stdout is closed", err=True)
        return EXIT_CANNOT_OBSERVE
    try:
        rv = cli.main(args=argv, prog_name="dnattrace", standalone_mode=False)
    except click.exceptions.Abort as e:     # click turns KeyboardInterrupt (and so Terminated) into Abort
        return _interrupted(args, 128 + signal.SIGTERM if isinstance(e.__context__, Terminated) else 130)
    except click.ClickException as e:      # usage errors: one line, like every other error
        click.echo("dnattrace: %s" % e.format_message(), err=True)
        return EXIT_USAGE
    except Terminated:
        return _interrupted(args, 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        return _interrupted(args, 130)
    except BrokenPipeError:
        # the reader left (`watch --json | head -1`): it had what it wanted, as `yes | head` ends quietly
        silence_stdout()
        return 0
    except SystemExit as e:
        if isinstance(e.__context__, BrokenPipeError):      # click's own handling of it: exit 1
            silence_stdout()
            return 0
        raise
    except DnattraceError as e:
        if traceback_wanted:
            raise
        click.echo("dnattrace: %s" % e, err=True)
        return e.exit_code
    except OSError as e:
        if traceback_wanted or e.errno not in _CANNOT_WRITE:
            raise
        # a full disk under a one-shot command's output (watch and drops handle theirs: output/stream.py)
        name = e.filename or stdout_name()
        if e.filename is None:
            silence_stdout()
        click.echo("dnattrace: cannot write %s: %s" % (name, e.strerror), err=True)
        return EXIT_CANNOT_OBSERVE
    except Exception as e:  # a libbpf failure with no fallback left
        from dnattrace.kernel.loader import BpfError
        if isinstance(e, BpfError) and not traceback_wanted:
            click.echo("dnattrace: %s" % str(e).splitlines()[0], err=True)
            return EXIT_CANNOT_OBSERVE
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
