"""The test- and bench-only BPF objects (tests/bpf/*.bpf.c: selftest, bad, floor), compiled on demand
by setup.py's compile step into tests/bpf/build/ (gitignored), never into the package.

    import bpfobjs
    path = bpfobjs.path("floor")    # compiled first if any source or header is newer than the object
"""
import glob
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(ROOT, "tests", "bpf")
BUILD_DIR = os.path.join(SOURCE_DIR, "build")


def _setup_module():
    """setup.py by path: `import setup` would depend on the caller's sys.path."""
    spec = importlib.util.spec_from_file_location("dnattrace_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build():
    """Compile every test object that is out of date; {name: path}."""
    sources = glob.glob(os.path.join(SOURCE_DIR, "*.bpf.c"))
    built = _setup_module().compile_bpf(sources, BUILD_DIR)
    return {os.path.basename(p)[: -len(".bpf.o")]: p for p in built}


def path(name):
    """The compiled object of tests/bpf/NAME.bpf.c, built first when out of date."""
    return build()[name]
