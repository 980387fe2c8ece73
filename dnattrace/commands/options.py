"""Every option's bounds, in one place, shared by the commands. A value that makes no sense (nan, inf, 0 or
negative seconds, a malformed address range, two output shapes at once) is refused while click parses the command
line: one line, exit 2, before anything touches the kernel."""
from __future__ import annotations

import ipaddress
import math

import click

# Upper bounds: far above any real use, low enough that a typo (an extra zero or three) is caught and
# that time.sleep() and the kernel's u32 counters accept them.
MAX_SECONDS = 366 * 24 * 3600.0
MAX_COUNT = 10_000_000
MAX_RATE = 1_000_000
MAX_TOP = 100_000


class Seconds(click.ParamType):
    """A finite number of seconds, more than 0, at least `low` and at most `high` (nan, inf, 0 and
    negatives refused)."""
    name = "seconds"

    def __init__(self, low: float = 0.0, high: float = MAX_SECONDS):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(value)
            except ValueError:
                self.fail("%s is not a number of seconds" % value, param, ctx)
        if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0 or seconds < self.low:
            self.fail("%s: give a number of seconds %s" % (
                value, "from %g" % self.low if self.low else "more than 0"), param, ctx)
        if seconds > self.high:
            self.fail("%s: at most %g s" % (value, self.high), param, ctx)
        return seconds


class AddressRange(click.ParamType):
    """An IPv4 or IPv6 address or CIDR range (2001:db8::/32, 198.51.100.0/24), normalised."""
    name = "cidr"

    def convert(self, value, param, ctx):
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.fail("%s is not an address range (CIDR)" % value, param, ctx)
        return str(net)


class Address(click.ParamType):
    """One IPv4 or IPv6 address, normalised (2001:DB8:0::1 -> 2001:db8::1): the kernel's filter compares
    bytes, user space compares text."""
    name = "ip"

    def convert(self, value, param, ctx):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.fail("%s is not an IP address" % value, param, ctx)


class Listen(click.ParamType):
    """[ADDR:]PORT to serve on: (address, port). No address: 127.0.0.1, so metrics are not exposed
    beyond the host unless asked for. Port 0 takes a free port (the start line names it)."""
    name = "[addr:]port"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        addr, _, port = str(value).rpartition(":")
        addr = addr.strip("[]") or "127.0.0.1"
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            self.fail("%s is not an IP address to listen on" % addr, param, ctx)
        if not port.isdigit() or int(port) > 65535:
            self.fail("%s: give [ADDR:]PORT with a port from 0 to 65535" % value, param, ctx)
        return addr, int(port)


SECONDS = Seconds()
# An interval of drops' reports: each is a read of the kernel's map and a table; below 10 ms the
# intervals are empty rows printed as fast as the terminal takes them.
INTERVAL = Seconds(low=0.01)
PORT = click.IntRange(1, 65535)
COUNT = click.IntRange(1, MAX_COUNT)
RATE = click.IntRange(0, MAX_RATE)
TOP = click.IntRange(1, MAX_TOP)
CIDR = AddressRange()
ADDRESS = Address()
LISTEN = Listen()


def exclusive(ctx: click.Context, **flags: str):
    """Refuse two flags that each choose the same thing (drops --json --dropwatch: the output shape).
    flags: parameter name -> the flag as typed."""
    given = [flag for name, flag in flags.items() if ctx.params.get(name)]
    if len(given) > 1:
        raise click.UsageError("%s cannot be used together: choose one" % " and ".join(given), ctx)
