"""The wheel, the way an operator installs it: `python -m build` once, then the wheel into a fresh virtual
environment on a PATH without clang, llc, llvm-* or bpftool, run from a directory outside the checkout.
doctor, drops and a lab scenario through diagnose (demo) must work with nothing but libbpf.so.1."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from hostcheck import ROOT, new_run_dir

pytestmark = pytest.mark.kernel

COMPILERS = ("clang", "llc", "llvm", "bpftool", "gcc", "cc")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """The sdist and the wheel `python -m build` makes from this checkout (built once per session)."""
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), ROOT],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1 and list(out.glob("*.tar.gz")), os.listdir(out)
    return wheels[0]


def bare_path(bindir):
    """A PATH of one folder holding a link to every program on this PATH but the compilers and bpftool."""
    os.makedirs(bindir, exist_ok=True)
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        if not os.path.isdir(d) or os.path.realpath(d) == os.path.realpath(bindir):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            link = os.path.join(bindir, name)
            if name.startswith(COMPILERS) or os.path.lexists(link) or not os.access(target, os.X_OK):
                continue
            if os.path.isfile(target):
                os.symlink(target, link)
    return bindir


@pytest.fixture(scope="session")
def venv(wheel, tmp_path_factory):
    """A fresh venv (no system site-packages) with the wheel and its dependencies installed by pip."""
    where = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    pip = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return where


def test_wheel_carries_the_objects_and_no_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dnattrace/bpfobj/%s.bpf.o" % n for n in ("watch", "drops", "probes")} <= set(names)
    assert not [n for n in names if n.endswith((".bpf.c", "vmlinux.h")) or n.startswith("tests/")]


def test_installed_wheel_runs_without_a_compiler(venv, tmp_path, root):
    path = bare_path(str(tmp_path / "bin"))
    assert not [t for t in ("clang", "llc", "bpftool") if shutil.which(t, path=path)]
    assert all(shutil.which(t, path=path) for t in ("ip", "iptables", "nft", "sysctl", "nsenter"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=str(venv / "bin") + os.pathsep + path, DNATTRACE_RUN_DIR=new_run_dir())
    cwd = str(tmp_path)      # outside the checkout: its dnattrace/ is not importable from here

    def run(*args, timeout=90):
        return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    where = run("python", "-c", "import dnattrace, sys; print(dnattrace.__file__); print(sys.prefix)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.split()[0].startswith(str(venv)) and not where.stdout.startswith(ROOT), where.stdout
    assert shutil.which("dnattrace", path=env["PATH"]) == str(venv / "bin" / "dnattrace")

    doctor = run("dnattrace", "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    assert "tp_btf" in doctor.stdout

    drops = run("dnattrace", "drops", "--duration", "1", "--json")
    assert drops.returncode == 0, drops.stderr
    records = [json.loads(line) for line in drops.stdout.splitlines()]
    assert records[0]["type"] == "start" and records[-1]["type"] == "summary"
    assert all(r["schema"] == 1 for r in records)

    demo = run("dnattrace", "demo", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Cause: IPv4 forwarding is off" in demo.stdout and "ip_error+" in demo.stdout


NO_LIBBPF = """
import ctypes, ctypes.util, sys
real = ctypes.CDLL
def refuse(name, *a, **k):
    if name and "bpf" in str(name):
        raise OSError("%s: cannot open shared object file: No such file or directory" % name)
    return real(name, *a, **k)
ctypes.CDLL, ctypes.util.find_library = refuse, lambda name: None
from dnattrace.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["doctor"], ["drops", "--duration", "1"]])
def test_missing_libbpf_is_one_line_naming_the_package(args, root):
    env = dict(os.environ, PYTHONPATH=ROOT, DNATTRACE_RUN_DIR=new_run_dir())
    p = subprocess.run([sys.executable, "-c", NO_LIBBPF] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and "libbpf1" in p.stderr and "libbpf.so.1" in p.stderr, p.stderr
