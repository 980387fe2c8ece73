"""The install-time BPF build says in one sentence what is missing."""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_build(env_path):
    env = dict(os.environ, PATH=env_path)
    return subprocess.run([sys.executable, "-c", "import setup; setup.build_bpf()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_clang_the_build_says_what_to_install(tmp_path):
    p = run_build(str(tmp_path))       # a PATH with no clang on it
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "clang is missing" in lines[0] and "apt-get install clang" in lines[0]


def test_objects_are_built_for_every_program():
    """One object per product program (bpf/<tool>/<tool>.bpf.c), and nothing else: the test-only programs
    (tests/bpf) are never built into the package."""
    sources = sorted(os.path.basename(f)[: -len(".c")] for f in glob.glob(os.path.join(ROOT, "bpf", "*", "*.bpf.c")))
    built = sorted(f[: -len(".o")] for f in os.listdir(os.path.join(ROOT, "dnattrace", "bpfobj")) if f.endswith(".o"))
    # tcdrop: the lab's below-IP fault (tc-ingress-drop), shipped so `lab up` needs no compiler
    assert sources == ["drops.bpf", "probes.bpf", "tcdrop.bpf", "watch.bpf"]
    assert sources == built
