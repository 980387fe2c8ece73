"""The `dnattrace` command: a thin click group. Each subcommand lives in its own module and is imported
only when it runs, so start-up stays fast and features do not import each other through the CLI.

Errors a user can act on (DnattraceError) are printed as one line with their exit code; a traceback
is shown only with --verbose.
"""
import importlib
import logging
import signal
import sys

import click

from dnattrace.errors import EXIT_CANNOT_OBSERVE, EXIT_USAGE, DnattraceError

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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Say which probes were chosen and why; show libbpf messages.")
@click.pass_context
def cli(ctx, verbose):
    """Find where and why the kernel drops a packet (Docker DNAT, netfilter, routing)."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR,
                        format="%(name)s: %(message)s", stream=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout 60 dnattrace watch`, a service manager): stop as Ctrl-C would, so watch and drops
    still print their summary, and every probe and lab resource is released on the way out."""


def _sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    """Entry point: turns user errors into one line and an exit code, SIGTERM into Ctrl-C's clean stop."""
    signal.signal(signal.SIGTERM, _sigterm)
    verbose = "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv)
    try:
        rv = cli.main(args=argv, prog_name="dnattrace", standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.ClickException as e:
        e.show()
        return EXIT_USAGE
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    except DnattraceError as e:
        if verbose:
            raise
        click.echo("dnattrace: %s" % e, err=True)
        return e.exit_code
    except Exception as e:  # a libbpf failure with no fallback left
        from dnattrace.kernel.loader import BpfError
        if isinstance(e, BpfError) and not verbose:
            click.echo("dnattrace: %s" % str(e).splitlines()[0], err=True)
            return EXIT_CANNOT_OBSERVE
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
