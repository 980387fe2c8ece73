"""Whether the running kernel attaches a kprobe.multi program (BPF_TRACE_KPROBE_MULTI, one link for many
functions), which dnattrace doctor does not try. Compiles a one-line program with clang into a temporary
directory, loads it with libbpf.so.1 and attaches SEC("kprobe.multi/tcp_v4_rc*") (libbpf resolves the
glob from kallsyms). Used for scripts/vm/MATRIX.md:

    scripts/vm/run --kernel 6.12 -t 200 -- python3 scripts/vm/check_kprobe_multi.py

Prints one line; exit 0 attached, 1 refused (with the errno), 2 could not build.
"""
import ctypes
import os
import subprocess
import sys
import tempfile

SRC = r'''
#define SEC(n) __attribute__((section(n), used))
unsigned long long hits;
SEC("kprobe.multi/tcp_v4_rc*") int km(void *ctx) { __sync_fetch_and_add(&hits, 1); return 0; }
char LICENSE[] SEC("license") = "GPL";
'''


def main():
    d = tempfile.mkdtemp()
    src, obj_path = os.path.join(d, "km.bpf.c"), os.path.join(d, "km.bpf.o")
    with open(src, "w") as f:
        f.write(SRC)
    r = subprocess.run(["clang", "-O2", "-target", "bpf", "-c", src, "-o", obj_path], capture_output=True, text=True)
    if r.returncode:
        print("kprobe.multi: cannot build the test program: %s" % r.stderr.strip())
        return 2
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_object__open_file.restype = ctypes.c_void_p
    lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.bpf_object__load.argtypes = [ctypes.c_void_p]
    lib.bpf_object__next_program.restype = ctypes.c_void_p
    lib.bpf_object__next_program.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_program__attach.restype = ctypes.c_void_p
    lib.bpf_program__attach.argtypes = [ctypes.c_void_p]
    lib.libbpf_get_error.restype = ctypes.c_long
    lib.libbpf_get_error.argtypes = [ctypes.c_void_p]
    obj = lib.bpf_object__open_file(obj_path.encode(), None)
    if not obj or lib.libbpf_get_error(obj):
        print("kprobe.multi: libbpf cannot open the test program")
        return 2
    rc = lib.bpf_object__load(obj)
    if rc:
        print("kprobe.multi: load refused: %s" % os.strerror(-rc))
        return 1
    link = lib.bpf_program__attach(lib.bpf_object__next_program(obj, None))
    err = lib.libbpf_get_error(link) if link else -ctypes.get_errno()
    if not link or err:
        print("kprobe.multi: attach refused: %s" % os.strerror(-err))
        return 1
    print('kprobe.multi: attached SEC("kprobe.multi/tcp_v4_rc*")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
