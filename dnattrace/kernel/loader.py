"""ctypes binding to libbpf.so.1: the one module of dnattrace that talks to libbpf or makes system calls.

Why ctypes and libbpf rather than bcc: the BPF programs are compiled once at install time (CO-RE) and
relocated here against the running kernel's BTF, so nothing needs kernel headers or a compiler at run
time. Only the calls dnattrace uses are bound. Everything a caller attaches is owned by a file
descriptor: closing it (or the process dying, even by SIGKILL) detaches it, so no pinning is used.

libbpf 1.1 (Debian bookworm) predates BPF netfilter links, so those are created with bpf(2) directly.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import logging
import mmap
import os
import signal
import threading

log = logging.getLogger("dnattrace.libbpf")

# enum bpf_prog_type / bpf_attach_type / bpf_map_type values used here (stable kernel UAPI numbers).
PROG_TYPE_NETFILTER = 32
ATTACH_NETFILTER = 45
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_PERCPU_HASH = 10
MAP_TYPE_RINGBUF = 27
_PERCPU_MAP_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH}
_BPF_LINK_CREATE = 28
_SYS_BPF = 321          # x86_64
_SYS_SETNS = 308        # x86_64
CLONE_NEWNET = 0x40000000

# netfilter constants (uapi/linux/netfilter.h)
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = range(5)
NF_PRIO_MIN = -(2 ** 31) + 1   # INT_MIN itself is refused by the kernel
NF_PRIO_MAX = 2 ** 31 - 2      # so is INT_MAX


class BpfError(Exception):
    """A libbpf or bpf(2) failure, with the errno and, for a load, libbpf's log and the verifier's."""

    def __init__(self, message, err=0, log_text=""):
        self.errno = err
        self.log = log_text
        detail = ": %s" % os.strerror(err) if err else ""
        super().__init__(message + detail)

    def verifier_message(self):
        """The last meaningful lines of the verifier log: what a user needs to see in one error."""
        lines = [l for l in self.log.splitlines() if l.strip() and not l.startswith("libbpf: ")]
        return "\n".join(lines[-8:])


_libbpf = None
_libc = None
_lock = threading.Lock()


def _new_lock_in_child():
    """A look-up child forked while another thread loads programs (watch's load_early) must not inherit
    _lock held by that thread, which does not exist in the child."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)
_log_capture: list[list[str]] = []

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


# libbpf hands a failed load's whole verifier log to the print callback as one message, and the reason
# for the refusal is at its end: the message buffer must hold megabytes. An anonymous mapping costs
# memory only for the pages a message touches.
_PRINT_BUF_SIZE = 16 << 20
_print_buf = None         # (mapping, its address)


LIBBPF_DEBUG = 2


def _print_cb(level, fmt, va_list):
    return _print(level, fmt, va_list)


_HELD = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def held_signals():
    """SIGINT and SIGTERM held back in this thread for the block, and delivered when it ends.

    Python runs a signal's handler at the first bytecode the main thread meets, and inside a libbpf call
    that may be the print callback: ctypes prints the KeyboardInterrupt (or SIGTERM's Terminated) and
    drops it, so a Ctrl-C or SIGTERM during start-up was lost (the watch then ran its whole duration).
    Held back, the signal arrives once libbpf has returned. Threads started inside the block inherit the
    mask and keep it: a signal must reach the main thread only, or its flag could be set while the
    main thread is inside a callback."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _print(level, fmt, va_list):
    global _print_buf
    if level == LIBBPF_DEBUG and not log.isEnabledFor(logging.DEBUG):
        # ~1,300 debug lines per load of watch.bpf.o (CO-RE relocations): formatting them cost ~25 ms and,
        # with load_early, the GIL the main thread needs; the verifier's log comes at warning level
        return 0
    if _print_buf is None:
        m = mmap.mmap(-1, _PRINT_BUF_SIZE)
        _print_buf = (m, ctypes.addressof(ctypes.c_char.from_buffer(m)))
    buf, addr = _print_buf
    n = _libc.vsnprintf(addr, _PRINT_BUF_SIZE, fmt, ctypes.c_void_p(va_list))
    text = buf[:max(0, min(n, _PRINT_BUF_SIZE - 1))].decode(errors="replace").rstrip("\n")
    for sink in _log_capture:
        sink.append(text)
    # Debug level whatever libbpf's level: a failed trial is expected while probing, and a real failure
    # reaches the user through the BpfError that carries the captured text.
    log.debug("%s", text)
    return 0


_print_cb_ref = _PRINT_FN(_print_cb)


def _fn(name, restype, *argtypes):
    f = getattr(_libbpf, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


def lib():
    """Load libbpf.so.1 once and declare the signatures used."""
    global _libbpf, _libc
    with _lock:
        if _libbpf is not None:
            return _libbpf
        path = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _libbpf = ctypes.CDLL(path, use_errno=True)
        except OSError:
            # the one run-time library a wheel needs (no compiler, no headers): name the package, exit 3
            from dnattrace.errors import CannotObserve
            raise CannotObserve("libbpf.so.1 is missing: install the libbpf1 package "
                                "(apt-get install libbpf1; libbpf >= 1.0)") from None
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.vsnprintf.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        _libc.syscall.restype = ctypes.c_long
        P, I, U, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
        _fn("libbpf_set_print", P, P)
        _fn("bpf_object__open_file", P, S, P)
        _fn("bpf_object__load", I, P)
        _fn("bpf_object__close", None, P)
        _fn("bpf_object__next_program", P, P, P)
        _fn("bpf_object__find_map_by_name", P, P, S)
        _fn("bpf_program__name", S, P)
        _fn("bpf_program__section_name", S, P)
        _fn("bpf_program__set_autoload", I, P, ctypes.c_bool)
        _fn("bpf_program__set_type", I, P, I)
        _fn("bpf_program__set_expected_attach_type", I, P, I)
        _fn("bpf_program__fd", I, P)
        _fn("bpf_program__attach", P, P)
        _fn("bpf_program__attach_trace", P, P)
        _fn("bpf_program__attach_tracepoint", P, P, S, S)
        _fn("bpf_program__attach_raw_tracepoint", P, P, S)
        _fn("bpf_program__attach_kprobe", P, P, ctypes.c_bool, S)
        _fn("bpf_link__destroy", I, P)
        _fn("bpf_link__fd", I, P)
        _fn("bpf_map__fd", I, P)
        _fn("bpf_map__key_size", U, P)
        _fn("bpf_map__value_size", U, P)
        _fn("bpf_map__type", I, P)
        _fn("bpf_map__max_entries", U, P)
        _fn("bpf_map__set_max_entries", I, P, U)
        _fn("bpf_map_lookup_elem", I, I, P, P)
        _fn("bpf_map_update_elem", I, I, P, P, ctypes.c_uint64)
        _fn("bpf_map_delete_elem", I, I, P)
        _fn("bpf_map_get_next_key", I, I, P, P)
        _fn("bpf_map_create", I, I, S, U, U, U, P)
        _fn("ring_buffer__new", P, I, _SAMPLE_FN, P, P)
        _fn("ring_buffer__poll", I, P, I)
        _fn("ring_buffer__consume", I, P)
        _fn("ring_buffer__free", None, P)
        _fn("libbpf_num_possible_cpus", I)
        _libbpf.libbpf_set_print(ctypes.cast(_print_cb_ref, ctypes.c_void_p))
        return _libbpf


def _errno():
    return ctypes.get_errno() or errno_mod.EINVAL


@contextlib.contextmanager
def capture_log():
    """Collect libbpf's messages (including the verifier log) while the block runs; signals are held
    back meanwhile (held_signals)."""
    sink: list[str] = []
    _log_capture.append(sink)
    try:
        with held_signals():
            yield sink
    finally:
        _log_capture.remove(sink)


def num_possible_cpus():
    return lib().libbpf_num_possible_cpus()


class Link:
    """An attachment; closing it detaches the program. Owned by a file descriptor, never pinned."""

    def __init__(self, description, libbpf_link=None, fd=None):
        self.description = description
        self._link = libbpf_link
        self._fd = fd

    @property
    def fd(self):
        if self._link:
            return lib().bpf_link__fd(self._link)
        return self._fd

    def close(self):
        if self._link:
            lib().bpf_link__destroy(self._link)
            self._link = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def closed(self):
        return self._link is None and self._fd is None

    def __repr__(self):
        return "<Link %s>" % self.description


class Program:
    def __init__(self, obj, ptr):
        self._obj = obj
        self._ptr = ptr
        self.name = lib().bpf_program__name(ptr).decode()
        self.section = lib().bpf_program__section_name(ptr).decode()

    @property
    def fd(self):
        return lib().bpf_program__fd(self._ptr)

    def set_autoload(self, on):
        lib().bpf_program__set_autoload(self._ptr, bool(on))

    def set_type(self, prog_type, expected_attach_type=None):
        lib().bpf_program__set_type(self._ptr, prog_type)
        if expected_attach_type is not None:
            lib().bpf_program__set_expected_attach_type(self._ptr, expected_attach_type)

    def _link(self, ptr, what):
        if not ptr:
            raise BpfError("cannot attach %s (%s)" % (self.name, what), _errno())
        return self._obj._own(Link(what, libbpf_link=ptr))

    def attach(self):
        """Attach by section name (tp_btf/, raw_tp/, tracepoint/, fentry/, fexit/, kprobe/, kretprobe/)."""
        return self._link(lib().bpf_program__attach(self._ptr), self.section)

    def attach_trace(self):
        return self._link(lib().bpf_program__attach_trace(self._ptr), self.section)

    def attach_tracepoint(self, category, name):
        ptr = lib().bpf_program__attach_tracepoint(self._ptr, category.encode(), name.encode())
        return self._link(ptr, "tracepoint/%s/%s" % (category, name))

    def attach_raw_tracepoint(self, name):
        return self._link(lib().bpf_program__attach_raw_tracepoint(self._ptr, name.encode()), "raw_tp/" + name)

    def attach_kprobe(self, func, retprobe=False):
        ptr = lib().bpf_program__attach_kprobe(self._ptr, bool(retprobe), func.encode())
        return self._link(ptr, ("kretprobe/" if retprobe else "kprobe/") + func)

    def attach_netfilter(self, hook, priority, pf=NFPROTO_IPV4, netns_path=None):
        """Create a BPF netfilter link (kernel >= 6.4) in the current network namespace or in netns_path."""
        attr = (ctypes.c_uint32 * 32)()
        attr[0] = self.fd
        attr[2] = ATTACH_NETFILTER
        attr[4] = pf
        attr[5] = hook
        attr[6] = ctypes.c_uint32(priority & 0xFFFFFFFF).value
        lib()
        with in_netns(netns_path):
            fd = _libc.syscall(_SYS_BPF, _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
            err = ctypes.get_errno()
        where = "netfilter pf=%d hook=%d prio=%d%s" % (pf, hook, priority, " in " + netns_path if netns_path else "")
        if fd < 0:
            raise BpfError("cannot create %s link for %s" % (where, self.name), err or errno_mod.EINVAL)
        return self._obj._own(Link(where, fd=fd))


class Map:
    def __init__(self, ptr):
        self._ptr = ptr
        L = lib()
        self.fd = L.bpf_map__fd(ptr)
        self.key_size = L.bpf_map__key_size(ptr)
        self.value_size = L.bpf_map__value_size(ptr)
        self.type = L.bpf_map__type(ptr)
        self.percpu = self.type in _PERCPU_MAP_TYPES
        # a per-CPU map returns one value slot per possible CPU, each rounded up to 8 bytes
        self.ncpus = num_possible_cpus() if self.percpu else 1
        self.slot = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size

    def _key(self, key):
        if len(key) != self.key_size:
            raise ValueError("key is %d bytes, map wants %d" % (len(key), self.key_size))
        return ctypes.create_string_buffer(bytes(key), self.key_size)

    def lookup(self, key):
        """The value as bytes (for a per-CPU map: a list of per-CPU values), or None."""
        val = ctypes.create_string_buffer(self.slot * self.ncpus)
        if lib().bpf_map_lookup_elem(self.fd, self._key(key), val) != 0:
            return None
        raw = val.raw
        if self.percpu:
            return [raw[i * self.slot: i * self.slot + self.value_size] for i in range(self.ncpus)]
        return raw

    def counter(self, index):
        """A u64 counter slot of an array map (u32 index), summed over CPUs for a per-CPU map."""
        v = self.lookup(index.to_bytes(4, "little"))
        if v is None:
            return 0
        return sum(int.from_bytes(x[:8], "little") for x in (v if self.percpu else [v]))

    def update(self, key, value, flags=0):
        if self.percpu and isinstance(value, (bytes, bytearray)):
            value = [value] * self.ncpus
        if isinstance(value, list):
            value = b"".join(bytes(v).ljust(self.slot, b"\0") for v in value)
        buf = ctypes.create_string_buffer(bytes(value), len(value))
        if lib().bpf_map_update_elem(self.fd, self._key(key), buf, flags) != 0:
            raise BpfError("map update failed", _errno())

    def delete(self, key):
        return lib().bpf_map_delete_elem(self.fd, self._key(key)) == 0

    def keys(self):
        """All keys, read with get_next_key (safe against concurrent deletion of the current key)."""
        out = []
        cur = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while lib().bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out

    def items(self):
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def clear(self):
        for k in self.keys():
            self.delete(k)


class RingBuffer:
    """Polls a BPF ring buffer map and hands each record (bytes) to a Python callback. A callback that
    returns True has had enough for now: the record is consumed, the rest stays in the ring for the next
    poll. Without that, a consumer that reads as fast as the kernel writes never leaves the loop, and
    what it took grows without bound."""

    def __init__(self, ringbuf_map, callback):
        self._error = None
        self._full = False

        def sample(_ctx, data, size):
            try:
                if callback(ctypes.string_at(data, size)):
                    self._full = True
                    return -1       # libbpf stops after this record, which it counts as consumed
            except BaseException as e:   # re-raised from poll(): an exception must not cross into C
                self._error = e
                return -1
            return 0

        self._cb = _SAMPLE_FN(sample)
        self._rb = lib().ring_buffer__new(ringbuf_map.fd, self._cb, None, None)
        if not self._rb:
            raise BpfError("cannot create ring buffer", _errno())

    def poll(self, timeout_ms=100):
        n = lib().ring_buffer__poll(self._rb, int(timeout_ms))
        self._raise()
        if n < 0 and n != -errno_mod.EINTR and not self._stopped():
            raise BpfError("ring buffer poll failed", -n)
        return max(n, 0)

    def consume(self):
        n = lib().ring_buffer__consume(self._rb)
        self._raise()
        self._stopped()
        return max(n, 0)

    def _stopped(self) -> bool:
        """The callback stopped the last call (its -1 is not an error); cleared for the next one."""
        full, self._full = self._full, False
        return full

    def _raise(self):
        if self._error is not None:
            e, self._error = self._error, None
            self._full = False
            raise e

    def close(self):
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None


class BpfObject:
    """An opened BPF ELF object: choose programs, load, attach; close() releases everything it owns."""

    def __init__(self, path):
        if not os.path.exists(path):
            raise BpfError("BPF object %s is missing; reinstall dnattrace (pip install .) to build it" % path)
        self.path = path
        L = lib()
        with capture_log() as sink:
            self._obj = L.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            raise BpfError("cannot open BPF object %s" % path, _errno(), "\n".join(sink))
        self._owned: list = []
        self._maps: dict[str, Map] = {}
        self.programs: dict[str, Program] = {}
        ptr = L.bpf_object__next_program(self._obj, None)
        while ptr:
            prog = Program(self, ptr)
            self.programs[prog.name] = prog
            ptr = L.bpf_object__next_program(self._obj, ptr)

    def _own(self, thing):
        self._owned.append(thing)
        return thing

    def only(self, *names):
        """Load only the named programs (the others keep their code but are not loaded)."""
        unknown = set(names) - set(self.programs)
        if unknown:
            # an object older than the code asking (a checkout whose bpf/ changed, not rebuilt): one line
            # and exit 3 from the CLI, not a KeyError's traceback
            raise BpfError("%s has no program %s: it was built from other sources; rebuild it (pip install ., "
                           "or python3 -c 'import setup; setup.build_bpf()' in a checkout)"
                           % (self.path, ", ".join(sorted(unknown))))
        for name, prog in self.programs.items():
            prog.set_autoload(name in names)
        return self

    def set_max_entries(self, map_name, n):
        ptr = lib().bpf_object__find_map_by_name(self._obj, map_name.encode())
        if not ptr or lib().bpf_map__set_max_entries(ptr, n) != 0:
            raise BpfError("cannot resize map %s" % map_name, _errno())

    def load(self):
        with capture_log() as sink:
            rc = lib().bpf_object__load(self._obj)
        release_memory()
        if rc != 0:
            err = -rc if rc < 0 else _errno()
            text = "\n".join(sink)
            e = BpfError("kernel refused to load %s" % os.path.basename(self.path), err, text)
            tail = e.verifier_message()
            if tail:
                e.args = (e.args[0] + "\nverifier: " + tail,)
            raise e
        return self

    def program(self, name):
        return self.programs[name]

    def map(self, name):
        if name not in self._maps:
            ptr = lib().bpf_object__find_map_by_name(self._obj, name.encode())
            if not ptr:
                raise KeyError("no map %s in %s" % (name, self.path))
            self._maps[name] = Map(ptr)
        return self._maps[name]

    def ring_buffer(self, map_name, callback):
        return self._own(RingBuffer(self.map(map_name), callback))

    def close(self):
        for thing in reversed(self._owned):
            thing.close()
        self._owned.clear()
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def release_memory():
    """Give freed heap back to the system. libbpf parses the kernel's BTF (~12 MB) for each object it
    loads and frees it after; without this, every load leaves a long-running process that much bigger.
    Called after each load: it costs a few ms, and keeps the peak to one load's worth."""
    lib()
    trim = getattr(_libc, "malloc_trim", None)     # glibc only
    if trim is not None:
        trim(0)


def create_map(map_type, key_size, value_size, max_entries):
    """Create a bare map (used to probe map types); returns its fd, caller closes it."""
    fd = lib().bpf_map_create(map_type, None, key_size, value_size, max_entries, None)
    if fd < 0:
        raise BpfError("cannot create map of type %d" % map_type, -fd if fd < -1 else _errno())
    return fd


def _setns(fd):
    lib()
    if _libc.syscall(_SYS_SETNS, fd, CLONE_NEWNET) != 0:
        raise BpfError("setns failed", ctypes.get_errno())


@contextlib.contextmanager
def in_netns(path):
    """Run the block in the network namespace at path (e.g. /run/netns/X or /proc/PID/ns/net).

    Netfilter links and netlink sockets bind to the namespace of the calling thread at creation, so
    this switches the current thread and always switches back.
    """
    if not path:
        yield
        return
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BpfError("network namespace %s is not there" % path, e.errno) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
