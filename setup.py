"""Build hook: compile bpf/*.bpf.c into dnattrace/bpfobj/ before the package is assembled.

The BPF programs are CO-RE objects: they are compiled once, here, against a vmlinux.h dumped from the
build machine's BTF, and relocated by libbpf at load time on whatever kernel runs them. Nothing is
compiled at run time (that is what rules out bcc on kernels without headers).
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
BTF = "/sys/kernel/btf/vmlinux"


def _fail(sentence):
    sys.stderr.write("dnattrace build: %s\n" % sentence)
    raise SystemExit(1)


def build_bpf():
    """Compile every bpf/*.bpf.c that is older than its object; say in one sentence what is missing."""
    clang = shutil.which("clang")
    if not clang:
        _fail("clang is missing: install it (apt-get install clang llvm) to compile the BPF programs.")
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        _fail("libbpf headers are missing: install libbpf-dev (apt-get install libbpf-dev).")
    vmlinux_h = os.path.join(BPF_DIR, "vmlinux.h")
    if not os.path.exists(vmlinux_h):
        if not os.path.exists(BTF):
            _fail("this kernel has no BTF (%s): build on a kernel with CONFIG_DEBUG_INFO_BTF=y." % BTF)
        bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
        if not os.path.exists(bpftool):
            _fail("bpftool is missing: install it (apt-get install bpftool) to make vmlinux.h from BTF.")
        with open(vmlinux_h + ".tmp", "w") as out:
            subprocess.run([bpftool, "btf", "dump", "file", BTF, "format", "c"], stdout=out, check=True)
        os.replace(vmlinux_h + ".tmp", vmlinux_h)
    os.makedirs(OUT_DIR, exist_ok=True)
    headers = glob.glob(os.path.join(BPF_DIR, "*.h"))
    newest_header = max(os.path.getmtime(h) for h in headers)
    for src in sorted(glob.glob(os.path.join(BPF_DIR, "*.bpf.c"))):
        obj = os.path.join(OUT_DIR, os.path.basename(src)[: -len(".c")] + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(src), newest_header):
            continue
        cmd = [clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall",
               "-Wno-unused-function", "-I", BPF_DIR, "-c", src, "-o", obj]
        print(" ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            _fail("clang could not compile %s (see the messages above)." % os.path.relpath(src, HERE))


class BuildWithBpf(build_py):
    def run(self):
        build_bpf()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithBpf})
