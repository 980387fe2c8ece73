"""Compile a C program that prints a header's sizes and offsets with the host compiler, and read them: how
the tests hold the Python struct formats to the C headers the BPF programs share."""
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layout(tmp_path, source: str, *include_dirs: str) -> dict[str, str]:
    """{name: value} from the lines "name value" the compiled `source` prints; include_dirs under bpf/."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "a C compiler is needed to check the layout against the C header"
    src = tmp_path / "layout.c"
    src.write_text(source)
    exe = tmp_path / "layout"
    flags = [a for d in include_dirs for a in ("-I", os.path.join(ROOT, "bpf", d))]
    subprocess.run([cc, *flags, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())
