"""The service in the container listens on 127.0.0.1 only; the published port resets.

Users report "Connection reset by peer" on a published port while `wget localhost:PORT` inside the
container works: the app is bound to the container's loopback, so the DNATed SYN to the container's
own address finds no socket (Docker's FAQ gained an entry for exactly this report; the same in a CLI's PR).
https://github.com/moby/moby/pull/10900  https://github.com/postmanlabs/observability-cli/pull/52
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/moby/moby/pull/10900"
FAMILY = 4
PROTO = "tcp"
STALL = False
# measured: tcp_v4_rcv/NO_SOCKET in the container, one per SYN (the client gets a RST)
TRUTH = {
    "drop": "tcp_v4_rcv/NO_SOCKET",
    "object": "the container's listener, bound to 127.0.0.1:80 instead of 0.0.0.0:80 (or ::)",
    "right_if": ["127.0.0.1"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    b_common.stop_servers(ctx)
    b_common.spawn(ctx, "ctr", b_common.PY_HTTP_LOOPBACK, [str(common.CTR_PORT), "1"], "127.0.0.1:80 ")
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    b_common.stop_servers(ctx)
    common.start_server(ctx, "http")


def teardown(ctx):
    common.teardown(ctx)
