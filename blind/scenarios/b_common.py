"""Shared pieces of the b_* blind scenarios: a Docker-like host in three namespaces.

The b_* scenarios each break one thing on the same small host, so the host itself is built
here once: an outside client namespace, a host namespace that DNATs a published port to a
"container" namespace behind a bridge, and a small server in the container.  Each scenario
then adds its fault.  Nothing here touches the root namespace.
"""
import hashlib
import os
import signal
import subprocess
import time

CLIENT4, HOST4 = "198.51.100.2", "198.51.100.1"
BRIDGE4, CTR4 = "172.30.0.1", "172.30.0.2"
CLIENT6, HOST6 = "2001:db8:1::2", "2001:db8:1::1"
BRIDGE6, CTR6 = "2001:db8:2::1", "2001:db8:2::2"


def sh(cmd: str, ns: str | None = None, check: bool = True, timeout: float = 10) -> str:
    """Run one shell command, inside namespace ns when given; returns stdout."""
    if ns:
        cmd = f"ip netns exec {ns} sh -c {quote(cmd)}"
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def names(prefix: str) -> dict:
    """Namespace and device names; devices get a short hash because IFNAMSIZ is 16."""
    tag = hashlib.sha1(prefix.encode()).hexdigest()[:6]
    return {"client": f"{prefix}-client", "host": f"{prefix}-host", "ctr": f"{prefix}-ctr",
            "out_h": f"bo{tag}h", "out_c": f"bo{tag}c", "br": f"bb{tag}",
            "ctr_h": f"bv{tag}h", "ctr_c": f"bv{tag}c"}


def build_host(prefix: str, port: int = 8080, ctr_port: int = 80, proto: str = "tcp",
               family: int = 4, build_dnat: bool = True) -> dict:
    """Builds the healthy host (both families addressed, the DNAT in the given family).

    Returns the ctx every b_* scenario starts from; teardown_host removes it all.
    """
    n = names(prefix)
    ctx = {"names": n, "host_netns": n["host"], "port": port, "ctr_port": ctr_port,
           "proto": proto, "family": family, "pids": []}
    guarded(ctx, lambda: _build(ctx, n, family, build_dnat))
    return ctx


def _build(ctx: dict, n: dict, family: int, build_dnat: bool) -> None:
    for ns in (n["client"], n["host"], n["ctr"]):
        sh(f"ip netns add {ns}")
        sh("ip link set lo up", ns)
    sh(f"ip link add {n['out_h']} netns {n['host']} type veth peer name {n['out_c']} netns {n['client']}")
    sh(f"ip link add {n['ctr_h']} netns {n['host']} type veth peer name {n['ctr_c']} netns {n['ctr']}")
    sh(f"ip link set {n['ctr_c']} name eth0", n["ctr"])
    h, c = n["host"], n["client"]
    sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1", h)
    sh(f"ip link add {n['br']} type bridge && ip link set {n['ctr_h']} master {n['br']}", h)
    sh(f"ip addr add {HOST4}/24 dev {n['out_h']} && ip addr add {HOST6}/64 dev {n['out_h']} nodad"
       f" && ip addr add {BRIDGE4}/16 dev {n['br']} && ip addr add {BRIDGE6}/64 dev {n['br']} nodad"
       f" && ip link set {n['out_h']} up && ip link set {n['br']} up && ip link set {n['ctr_h']} up", h)
    sh(f"ip addr add {CLIENT4}/24 dev {n['out_c']} && ip addr add {CLIENT6}/64 dev {n['out_c']} nodad"
       f" && ip link set {n['out_c']} up", c)
    ctr_addresses(n)
    if build_dnat:
        dnat(ctx, CTR4 if family == 4 else CTR6)


def ctr_addresses(n: dict) -> None:
    sh(f"ip addr add {CTR4}/16 dev eth0 && ip addr add {CTR6}/64 dev eth0 nodad && ip link set eth0 up"
       f" && ip route add default via {BRIDGE4} && ip -6 route add default via {BRIDGE6}", n["ctr"])


def attach_to_bridge(ctx: dict, ns_key: str, addr: str) -> None:
    """Gives namespace ns_key a second link, on the host's bridge (a pod beside the container)."""
    n = ctx["names"]
    h_end, ns_end = f"bp{n['br'][2:]}h", f"bp{n['br'][2:]}c"
    sh(f"ip link add {h_end} netns {n['host']} type veth peer name {ns_end} netns {n[ns_key]}")
    sh(f"ip link set {h_end} master {n['br']} && ip link set {h_end} up", n["host"])
    sh(f"ip addr add {addr}/16 dev {ns_end} && ip link set {ns_end} up"
       f" && ip route add default via {BRIDGE4}", n[ns_key])


def recreate_ctr_link(ctx: dict) -> None:
    """What a container restart does to its link: a new veth pair (new MACs) on the same bridge."""
    n = ctx["names"]
    sh(f"ip link del {n['ctr_h']}", n["host"])
    sh(f"ip link add {n['ctr_h']} netns {n['host']} type veth peer name {n['ctr_c']} netns {n['ctr']}")
    sh(f"ip link set {n['ctr_c']} name eth0", n["ctr"])
    sh(f"ip link set {n['ctr_h']} master {n['br']} && ip link set {n['ctr_h']} up", n["host"])
    ctr_addresses(n)


def guarded(ctx: dict, steps) -> dict:
    """Runs a scenario's build steps; on any failure removes what was made, then re-raises."""
    try:
        steps()
    except BaseException:
        teardown_host(ctx)
        raise
    return ctx


def dnat(ctx: dict, target: str, ctr_port: int | None = None) -> None:
    """Docker's publishing rules: DNAT in nat PREROUTING, an ACCEPT in filter FORWARD."""
    ipt = "iptables" if ":" not in target else "ip6tables"
    dest = f"{target}:{ctr_port or ctx['ctr_port']}" if ":" not in target else \
        f"[{target}]:{ctr_port or ctx['ctr_port']}"
    sh(f"{ipt} -t nat -A PREROUTING -p {ctx['proto']} --dport {ctx['port']} -j DNAT --to-destination {dest}",
       ctx["host_netns"])
    sh(f"{ipt} -A FORWARD -d {target} -p {ctx['proto']} --dport {ctr_port or ctx['ctr_port']} -j ACCEPT",
       ctx["host_netns"])


def nft(ctx: dict, ruleset: str, ns_key: str = "host") -> None:
    """Loads an nft ruleset (text) into one of the scenario's namespaces."""
    subprocess.run(["ip", "netns", "exec", ctx["names"][ns_key], "nft", "-f", "-"], input=ruleset,
                   text=True, check=True, capture_output=True, timeout=10)


def spawn(ctx: dict, ns: str, argv: list[str], wait_port: int | None = None) -> int:
    """Starts a server inside ns (own session so teardown can end it); waits until it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    ctx["pids"].append(p.pid)
    if wait_port:
        for _ in range(50):
            if f":{wait_port} " in sh("ss -Hltnu", ns, check=False):
                break
            time.sleep(0.1)
    return p.pid


def http_server(ctx: dict, bind: str = "::", port: int = 80, body_bytes: int = 0) -> None:
    """python3 http.server in the container; body_bytes > 0 adds a large file /big."""
    root = f"/tmp/{ctx['names']['ctr']}-www"
    os.makedirs(root, exist_ok=True)
    with open(f"{root}/index.html", "w") as f:
        f.write("hello from the container\n")
    if body_bytes:
        with open(f"{root}/big", "wb") as f:
            f.write(b"x" * body_bytes)
    ctx["www"] = root
    spawn(ctx, ctx["names"]["ctr"], ["python3", "-m", "http.server", str(port), "--bind", bind,
                                     "--directory", root], wait_port=port)


def http_get(ns: str, url: str, expect: bytes, timeout: float = 3) -> bool:
    """One bounded GET from ns; True only when the whole expected body arrived."""
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-g", "-m", str(timeout), url],
                           capture_output=True, timeout=timeout + 2)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and r.stdout == expect


def teardown_servers(ctx: dict) -> None:
    """Ends the servers spawn started (each leads its own session); idempotent."""
    while ctx.get("pids"):
        pid = ctx["pids"].pop()
        try:
            os.killpg(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, PermissionError, ChildProcessError):
            pass


def teardown_host(ctx: dict) -> None:
    """Ends the servers started here and deletes the three namespaces; idempotent."""
    teardown_servers(ctx)
    n = ctx.get("names") or {}
    for key in ("client", "host", "ctr"):
        if n.get(key):
            sh(f"ip netns del {n[key]}", check=False)
    if ctx.get("www"):
        subprocess.run(["rm", "-rf", ctx["www"]], check=False)
