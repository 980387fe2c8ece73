"""Lab instance state: one JSON file per instance under /run/dnattrace/lab/, and the undo log in it.

Every object `up` makes (namespace, link, sysctl with its old value, process, container, directory) is
appended to the file *before* it is made, so `down` can remove exactly that even after a crash half way
through `up`. Undoing is idempotent: each step checks whether its object still exists.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time

from dnattrace.netns import build as net, record

STATE_DIR = os.path.join(record.RUN_DIR, "lab")


@dataclasses.dataclass
class Instance:
    """A running lab instance: where its pieces are and what the client should connect to."""
    name: str
    scenario: str
    docker: bool                    # a real engine's variant: Docker's, or Podman's when podman is set
    token: str                      # short prefix of interface names (<= 9 characters)
    client_ns: str                  # ip-netns name of the outside client
    host_ns: str | None             # ip-netns name of the host, None for the root namespace (--docker)
    container_ns: str | None        # ip-netns name, or /proc/PID/ns/net of a Docker container
    container_name: str | None      # Docker container name (--docker), else None
    client_addr: str
    target_addr: str                # what the client connects to
    target_port: int
    proto: str
    container_addr: str
    container_port: int
    outside_if: str                 # host-side interface facing the client
    bridge: str
    created: float = 0.0
    complete: bool = False          # set once `up` has made everything
    builder: dict = dataclasses.field(default_factory=dict)   # pid and start time of the `up` building it
    objects: list = dataclasses.field(default_factory=list)   # the undo log, in creation order
    podman: bool = False            # the --podman variant (docker is then True too: a real engine, root ns)

    def target(self):
        """The dnattrace Target of this instance: its published port, DNAT target and namespaces."""
        from dnattrace.target import Endpoint, Target
        return Target(proto=self.proto, port=self.target_port,
                      backends=[Endpoint(self.container_addr, self.container_port)],
                      container=self.container_name or "",
                      host_netns=net.netns_path(self.host_ns) if self.host_ns else None,
                      container_netns=self.container_ns if self.container_ns.startswith("/")
                      else net.netns_path(self.container_ns))

    def status(self):
        """'up' once built; 'building' while the `up` making it runs; "incomplete" when that `up` is gone
        before finishing (killed): `lab down` removes what it made."""
        if self.complete:
            return "up"
        if self.builder and record.process_start(self.builder.get("pid", 0)) == self.builder.get("start"):
            return "building"
        return "incomplete"

    # -- persistence ---------------------------------------------------------------------------------
    @property
    def path(self):
        return state_path(self.name)

    def to_dict(self):
        return dataclasses.asdict(self)

    def public_dict(self):
        d = self.to_dict()
        del d["objects"], d["builder"], d["complete"]
        d["status"] = self.status()
        return d

    def save(self):
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:      # SIGTERM or Ctrl-C half way: no temporary file left behind
            _unlink(tmp)
            raise

    def record(self, kind, **fields):
        """Note an object in the undo log and persist it, before the caller makes the object."""
        self.objects.append(dict(kind=kind, **fields))
        self.save()

    # -- traffic -------------------------------------------------------------------------------------
    def traffic(self, attempts=1, timeout=2.0):
        """Bounded TCP connect + small HTTP GET from the client namespace; a TrafficResult."""
        from dnattrace.lab import traffic
        return traffic.request(self, attempts=attempts, timeout=timeout)

    def syn_burst(self, count=10, timeout=0.2):
        """Send `count` SYNs quickly (parallel non-blocking connects, all closed after `timeout`)."""
        from dnattrace.lab import traffic
        return traffic.syn_burst(self, count=count, timeout=timeout)


def state_path(name):
    return os.path.join(STATE_DIR, name + ".json")


def create(inst):
    """Claim the instance name atomically; False when a state file already exists. The file appears
    whole (link(2) of a written file), never empty: a run killed at once still leaves a readable one."""
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = "%s.%d.new" % (inst.path, os.getpid())
    try:
        with open(tmp, "w") as f:
            json.dump(inst.to_dict(), f, indent=1)
        os.link(tmp, inst.path)
    except FileExistsError:
        return False
    finally:
        _unlink(tmp)
    return True


def remove_orphans():
    """Temporary files of create() whose process is gone (a lab up killed while claiming its name)."""
    if not os.path.isdir(STATE_DIR):
        return
    for f in os.listdir(STATE_DIR):
        pid = f.rsplit(".", 2)[-2] if f.endswith(".new") else ""
        if pid.isdigit() and process_start(int(pid)) is None:
            _unlink(os.path.join(STATE_DIR, f))


def load(name):
    """The instance named `name`, or None when it has no state file."""
    try:
        with open(state_path(name)) as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    return Instance(**d)


def names():
    if not os.path.isdir(STATE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(STATE_DIR) if f.endswith(".json"))


# -- undo ---------------------------------------------------------------------------------------------

process_start = record.process_start


def _undo_process(obj):
    pid = obj["pid"]
    if process_start(pid) != obj.get("start"):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:  # reap it if it is our own child (same process ran up and down, e.g. tests)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if process_start(pid) != obj.get("start"):
            return
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.02)


def _undo_sysctl(obj):
    ns = obj.get("netns")
    if ns and not net.netns_exists(ns):
        return
    try:
        net.sysctl_set(obj["key"], obj["old"], ns)
    except net.NetError:
        pass


def _undo_rule(obj):
    ns = obj.get("netns")
    if ns and not net.netns_exists(ns):
        return
    net.run(["iptables", "-t", obj["table"], "-D"] + obj["rule"], netns=ns, check=False)


def _undo_container(obj):
    subprocess.run(["docker", "rm", "-f", obj["name"]], capture_output=True, timeout=60)


def _undo_podman_container(obj):
    subprocess.run(["podman", "rm", "-f", "-t", "0", obj["name"]], capture_output=True, timeout=90)


def _undo_podman_network(obj):
    """The network, with its netavark rules (and any container still on it)."""
    subprocess.run(["podman", "network", "rm", "-f", obj["name"]], capture_output=True, timeout=90)


def _undo_docker_network(obj):
    """A user-defined Docker network (the IPv6 lab's), with any container still on it."""
    for cid in subprocess.run(["docker", "network", "inspect", "-f", "{{range $k, $v := .Containers}}{{$k}} {{end}}",
                               obj["name"]], capture_output=True, text=True, timeout=60).stdout.split():
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)
    subprocess.run(["docker", "network", "rm", obj["name"]], capture_output=True, timeout=60)


def _undo_netns(obj):
    """Processes still in the namespace go first: one started but not yet recorded when its `up` was
    killed (a server is recorded once it has a pid) would outlive the namespace's name."""
    name = obj["name"]
    if not net.netns_exists(name):
        return
    for pid in net.run(["ip", "netns", "pids", name], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    net.del_netns(name)


UNDO = {
    "netns": _undo_netns,
    "link": lambda o: net.del_link(o["name"], o.get("netns")) if (o.get("netns") is None or
                                                                  net.netns_exists(o["netns"])) else None,
    "sysctl": _undo_sysctl,
    "process": _undo_process,
    "container": _undo_container,
    "podman-container": _undo_podman_container,
    "podman-network": _undo_podman_network,
    "docker-network": _undo_docker_network,
    "rule": _undo_rule,
    "dir": lambda o: shutil.rmtree(o["path"], ignore_errors=True),
}


def undo(inst):
    """Remove every recorded object, newest first, then the state file. Safe to run twice."""
    errors = []
    for obj in reversed(inst.objects):
        try:
            UNDO[obj["kind"]](obj)
        except Exception as e:  # keep going: one stuck object must not leave the others behind
            errors.append("%s %s: %s" % (obj["kind"], obj.get("name") or obj.get("key") or obj.get("pid"), e))
    if not errors:
        _unlink(inst.path)
        _unlink(inst.path + ".tmp")     # a save() that a SIGKILL cut short
    return errors


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
