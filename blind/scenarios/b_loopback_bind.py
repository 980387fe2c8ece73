"""The service in the container listens on 127.0.0.1 only; the published port resets.

Users report "Connection reset by peer" on a published port while `wget localhost:PORT` inside the
container works: the app is bound to the container's loopback, so the DNATed SYN to the container's
own address finds no socket (Docker FAQ added for exactly this report; the same in a CLI's PR).
https://github.com/moby/moby/pull/10900  https://github.com/postmanlabs/observability-cli/pull/52
"""
from blind.scenarios import b_common as c

SOURCE = "https://github.com/moby/moby/pull/10900"
FAMILY = 4
PROTO = "tcp"
STALL = False
TRUTH = {
    "drop": "tcp_v4_rcv / NO_SOCKET in the container (measured, one per SYN; the client gets a RST)",
    "object": "the container's listener, bound to 127.0.0.1:80 instead of 0.0.0.0:80",
    "right_if": ["127.0.0.1"],
}
BODY = b"hello from the container\n"


def build(prefix: str) -> dict:
    ctx = c.build_host(prefix)
    c.guarded(ctx, lambda: c.http_server(ctx, bind="127.0.0.1"))
    return ctx


def attempt(ctx) -> bool:
    return c.http_get(ctx["names"]["client"], f"http://{c.HOST4}:{ctx['port']}/index.html", BODY)


def fix(ctx) -> None:
    c.teardown_servers(ctx)
    c.http_server(ctx, bind="0.0.0.0")


def teardown(ctx) -> None:
    c.teardown_host(ctx)
