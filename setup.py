"""Build hook: compile the product's BPF programs (bpf/*/*.bpf.c) into dnattrace/bpfobj/ before the
package is assembled.

The BPF programs are CO-RE objects: they are compiled once, here, against a vmlinux.h dumped from the
build machine's BTF, and relocated by libbpf at load time on whatever kernel runs them. Nothing is
compiled at run time (that is what rules out bcc on kernels without headers).

compile_bpf() is the one compiler step; the tests build their own objects (tests/bpf) with it, into a
folder of their own, so nothing test-only is shipped.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
BPF_DIR = os.path.join(HERE, "bpf")
OUT_DIR = os.path.join(HERE, "dnattrace", "bpfobj")
INCLUDE_DIRS = [BPF_DIR, os.path.join(BPF_DIR, "common")]    # vmlinux.h; skb.h, drop_key.h
BTF = "/sys/kernel/btf/vmlinux"


def _fail(sentence):
    sys.stderr.write("dnattrace build: %s\n" % sentence)
    raise SystemExit(1)


def _ensure_vmlinux_h():
    vmlinux_h = os.path.join(BPF_DIR, "vmlinux.h")
    if os.path.exists(vmlinux_h):
        return
    if not os.path.exists(BTF):
        _fail("this kernel has no BTF (%s): build on a kernel with CONFIG_DEBUG_INFO_BTF=y." % BTF)
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists(bpftool):
        _fail("bpftool is missing: install it (apt-get install bpftool) to make vmlinux.h from BTF.")
    os.makedirs(BPF_DIR, exist_ok=True)
    with open(vmlinux_h + ".tmp", "w") as out:
        subprocess.run([bpftool, "btf", "dump", "file", BTF, "format", "c"], stdout=out, check=True)
    os.replace(vmlinux_h + ".tmp", vmlinux_h)


def object_name(src):
    """bpf/watch/watch.bpf.c -> watch.bpf.o"""
    return os.path.basename(src)[: -len(".c")] + ".o"


def compile_bpf(sources, out_dir):
    """Compile each source that is older than its object (or than any header under bpf/, or beside the
    source) into out_dir; return the objects' paths. Says in one sentence what is missing."""
    clang = shutil.which("clang")
    if not clang:
        _fail("clang is missing: install it (apt-get install clang llvm) to compile the BPF programs.")
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        _fail("libbpf headers are missing: install libbpf-dev (apt-get install libbpf-dev).")
    _ensure_vmlinux_h()
    os.makedirs(out_dir, exist_ok=True)
    shared = glob.glob(os.path.join(BPF_DIR, "**", "*.h"), recursive=True)
    objects = []
    for src in sorted(sources):
        headers = shared + glob.glob(os.path.join(os.path.dirname(src), "*.h"))
        obj = os.path.join(out_dir, object_name(src))
        objects.append(obj)
        newest_input = max([os.path.getmtime(src)] + [os.path.getmtime(h) for h in headers])
        if os.path.exists(obj) and os.path.getmtime(obj) >= newest_input:
            continue
        cmd = [clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function"]
        cmd += [arg for d in INCLUDE_DIRS for arg in ("-I", d)] + ["-c", src, "-o", obj]
        print(" ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            _fail("clang could not compile %s (see the messages above)." % os.path.relpath(src, HERE))
    return objects


def product_sources():
    """The programs the package ships: one folder per tool under bpf/ (watch, drops, probes)."""
    return sorted(glob.glob(os.path.join(BPF_DIR, "*", "*.bpf.c")))


def build_bpf():
    """Compile the product's programs into dnattrace/bpfobj/, and remove objects there that no product
    source makes any more (a test object left by an older layout would otherwise be shipped)."""
    sources = product_sources()
    built = compile_bpf(sources, OUT_DIR)
    for obj in glob.glob(os.path.join(OUT_DIR, "*.o")):
        if obj not in built:
            print("removing %s (no source under bpf/*/ makes it)" % os.path.relpath(obj, HERE))
            os.remove(obj)


class BuildWithBpf(build_py):
    def run(self):
        build_bpf()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithBpf})
