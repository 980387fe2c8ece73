"""What users expect of a command-line tool: an example in every --help, shell completion, and a schema
version in every --json record (README, "JSON records")."""
import json
import os
import subprocess
import sys

import pytest

from dnattrace.output import tables
from hostcheck import ROOT

COMMANDS = [[], ["doctor"], ["drops"], ["watch"], ["diagnose"], ["demo"], ["lab"], ["lab", "list"],
            ["lab", "up"], ["lab", "traffic"], ["lab", "status"], ["lab", "down"]]


def cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "dnattrace.cli"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "dnattrace")
def test_every_help_has_an_example(args):
    p = cli(*args, "--help")
    assert p.returncode == 0, p.stderr
    example = p.stdout.split("Example", 1)[1]
    assert "dnattrace " in example, p.stdout


def test_bash_completion_is_click_s():
    p = cli(env={"_DNATTRACE_COMPLETE": "bash_source"})
    assert p.returncode == 0 and "_dnattrace_completion()" in p.stdout, p.stdout + p.stderr
    words = cli(env={"_DNATTRACE_COMPLETE": "bash_complete", "COMP_WORDS": "dnattrace drops --prom",
                     "COMP_CWORD": "2"})
    assert "plain,--prometheus" in words.stdout.splitlines()


def test_records_carry_type_then_schema():
    line = json.loads(tables.json_line({"type": "start", "probe": "x", "schema": 99}))
    assert list(line)[:2] == ["type", "schema"] and line["schema"] == tables.SCHEMA == 1
    assert list(tables.record({"id": "healthy"}, "scenario"))[:3] == ["type", "schema", "id"]
    listed = [json.loads(l) for l in cli("lab", "list", "--json").stdout.splitlines()]
    assert listed and all(r["type"] == "scenario" and r["schema"] == 1 and r["id"] for r in listed)
