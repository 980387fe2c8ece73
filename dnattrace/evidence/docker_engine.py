"""The Docker engine's HTTP API over its unix socket, with the standard library alone.

Why not the SDK here: `dnattrace watch --port P` asks the engine which container publishes the port on
its way to 'Watching', and importing the Docker SDK (requests, urllib3, ssl) costs ~0.2 s of that and
~16 MB that a long watch would keep. Two GETs answer the question (the container list, one inspect),
so they go over the socket as HTTP/1.0 (the engine answers with a plain body and closes). An engine
reached any other way (DOCKER_HOST tcp:// or ssh://, TLS) is the SDK's: socket_path() says None.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Optional
from urllib.parse import quote

from dnattrace.errors import DnattraceError

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 10.0


class NotFound(DnattraceError):
    """The engine answered 404 (no such container)."""


def socket_path() -> Optional[str]:
    """The engine's unix socket as the SDK's from_env() would pick it (DOCKER_HOST, else the default);
    None when DOCKER_HOST names anything but a unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):] or DEFAULT_SOCKET
    return None


def get(path: str, sock_path: Optional[str] = None):
    """GET path from the engine, its JSON body decoded; DnattraceError when the engine cannot be reached
    or answers with an error, NotFound for a 404."""
    sock_path = sock_path or socket_path() or DEFAULT_SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect(sock_path)
            s.sendall(b"GET %s HTTP/1.0\r\nHost: docker\r\n\r\n" % path.encode())
            data = _read_all(s)
    except OSError as e:
        raise DnattraceError("cannot reach the Docker engine (%s: %s); is dockerd running?"
                             % (sock_path, e.strerror or e)) from None
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
    if code == 404:
        raise NotFound("Docker engine: %s: not found" % path)
    if code != 200:
        raise DnattraceError("Docker engine error for %s: HTTP %s %s" % (path, code or "?", body[:120].decode(errors="replace").strip()))
    try:
        return json.loads(body)
    except ValueError as e:
        raise DnattraceError("Docker engine: %s: unexpected answer (%s)" % (path, e)) from None


def _read_all(s) -> bytes:
    chunks = []
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def containers() -> list[dict]:
    """The running containers, as GET /containers/json lists them (Id, Names, Ports, ...)."""
    return get("/containers/json")


def inspect(name_or_id: str) -> dict:
    """GET /containers/NAME/json: what the SDK's api.inspect_container returns."""
    return get("/containers/%s/json" % quote(name_or_id, safe=""))
