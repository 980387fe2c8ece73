"""Errors a user can make or meet give one clear line on stderr and a defined exit code, never a
traceback: not root, tracefs that cannot be mounted, an unknown option."""
import os
import subprocess
import sys
import textwrap

import pytest

from dnattrace.kernel import tracefs
from dnattrace.errors import CannotObserve

# Drops to the `nobody` user after Python has started and imported what the command needs (the
# interpreter and its library may live where nobody cannot read, e.g. under /root), then runs the CLI.
AS_NOBODY = textwrap.dedent("""
    import os, sys, locale, gettext
    import dnattrace.cli, dnattrace.commands.doctor
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    sys.exit(dnattrace.cli.main(sys.argv[1:]))
""")


def dnattrace(*args, env=None, as_nobody=False):
    code = AS_NOBODY if as_nobody else "import sys, dnattrace.cli; sys.exit(dnattrace.cli.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code] + list(args), capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(env or {})), cwd="/")


def one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--json"]])
def test_not_root_is_one_line_exit_3(root, args):
    p = dnattrace(*args, as_nobody=True)
    assert p.returncode == 3, p.stderr
    assert "needs root" in one_line(p.stderr)
    assert p.stdout == ""


def test_tracefs_that_cannot_be_mounted_is_one_line_exit_3(root):
    where = "/nonexistent/dnattrace-%d/tracing" % os.getpid()
    p = dnattrace("doctor", env={tracefs.ENV: where})
    assert p.returncode == 3, p.stdout + p.stderr
    line = one_line(p.stderr)
    assert "tracefs is not mounted at %s" % where in line and "mount -t tracefs" in line
    assert not os.path.exists(where)


def test_tracefs_ensure_mounts_nothing_at_an_impossible_place(root, monkeypatch):
    monkeypatch.setenv(tracefs.ENV, "/proc/version")   # a file in procfs: cannot be a mount point
    with pytest.raises(CannotObserve, match="could not be mounted"):
        tracefs.ensure()
    assert not tracefs.is_mounted("/proc/version")


def test_tracefs_ensure_accepts_the_mounted_one(root, monkeypatch):
    monkeypatch.delenv(tracefs.ENV, raising=False)
    assert tracefs.ensure() == tracefs.DEFAULT and tracefs.is_mounted()


@pytest.mark.parametrize("args", [["doctor", "--bogus"], ["--bogus"], ["no-such-command"]])
def test_bad_usage_exits_2(args):
    p = dnattrace(*args)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr


def test_v_shows_dnattraces_decisions_and_vv_libbpfs_too(root):
    """-v is for dnattrace's own decisions; libbpf's thousands of ELF/relocation lines only with -vv."""
    base = [sys.executable, "-m", "dnattrace.cli"]
    one = subprocess.run(base + ["-v", "drops", "--duration", "1"], capture_output=True, text=True, timeout=60)
    two = subprocess.run(base + ["-vv", "drops", "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert one.returncode == two.returncode == 0, one.stderr[-500:] + two.stderr[-500:]
    assert "dnattrace.libbpf" not in one.stderr
    assert "dnattrace.libbpf" in two.stderr


def test_usage_errors_are_one_line():
    p = subprocess.run([sys.executable, "-m", "dnattrace.cli", "watch", "--no-such-option"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no-such-option" in p.stderr
