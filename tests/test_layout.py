"""The package's rooms and the one direction of imports between them (README, Layout): a lower room
never imports a higher one, and nothing but the CLI's command table names the lab."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dnattrace")

# room -> the rooms it may import (besides itself); modules at the package root are rooms of their own
ALLOWED = {
    "paths": set(),
    "errors": set(), "model": set(), "signals": set(),
    "forked": {"errors"},
    "target": {"model"},
    "kernel": {"errors"},
    "netns": {"errors", "forked", "kernel"},
    "evidence": {"errors", "forked", "kernel", "netns", "target", "model"},
    "drops": {"errors", "kernel", "netns", "model"},
    "watch": {"errors", "forked", "kernel", "netns", "evidence", "drops", "target", "model", "signals"},
    "diagnose": {"errors", "forked", "kernel", "netns", "evidence", "watch", "target", "model", "signals"},
    "output": {"errors", "model", "target", "diagnose", "drops", "kernel"},
    "commands": {"errors", "forked", "kernel", "netns", "evidence", "drops", "watch", "diagnose", "output",
                 "target", "model", "signals"},
    "cli": {"errors", "kernel"},
}

# rooms of plain constants every room may use
EVERYWHERE = {"paths"}


def room(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dnattrace"):
            if node.module == "dnattrace":
                for alias in node.names:
                    yield "dnattrace." + alias.name
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dnattrace."):
                    yield alias.name


def modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def test_imports_run_one_way():
    wrong = []
    for mod, path in modules():
        here = room(mod)
        if here in (None, "lab"):      # the lab is a leaf: it may use everything
            continue
        for imp in imports_of(path):
            there = room(imp)
            if there and there != here and there not in ALLOWED[here] | EVERYWHERE:
                wrong.append("%s imports %s" % (mod, imp))
    assert not wrong, "\n".join(wrong)


def test_every_room_is_in_the_table():
    rooms = {room(m) for m, _ in modules()} - {None, "lab", "bpfobj"}
    assert rooms <= set(ALLOWED), rooms - set(ALLOWED)
