"""Every command and option with bad values, generated from a table of value kinds: each answer is one
line on stderr and exit 2, and nothing is attached or created (no BPF link, no namespace, no lab state,
no process left). The real CLI of this tree runs each case as a subprocess, a few at a time."""
import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

import hostcheck as hc

SECONDS = ["nan", "inf", "-inf", "0", "-1", "1e400", "abc", "", "1e9"]
COUNT = ["0", "-1", "1.5", "abc", "", "99999999999"]
PORT = ["0", "-1", "65536", "http", ""]
RATE = ["-1", "1.5", "x", "1000001"]
TOP = ["0", "-5", "x", "100001"]
CIDR = ["10.0.0.0/33", "not-an-ip", "999.1.1.1/8", "2001:db8::/129", "2001:db8::g/64"]   # IPv6 ranges are valid
ADDRESS = ["999.1.1.1", "10.0.0.0/8", "not-an-ip", "2001:db8::/64", "2001:db8:::1"]
NETNS = ["/tmp", "/etc/passwd", "no-such-netns-dnattrace"]
LISTEN = ["70000", "-1", "x", "", "999.1.1.1:9433", "host:9433", "192.0.2.1:9433"]   # the last: not ours to bind

# command (with what it needs to start) -> option -> the kind of its value
COMMANDS = {
    ("drops",): {"--interval": SECONDS, "--duration": SECONDS, "--count": COUNT, "--top": TOP, "--port": PORT,
                 "--proto": ["sctp", ""], "--by": ["port"], "--netns": NETNS,
                 "--prometheus": LISTEN},
    ("watch", "--port", "8079"): {"--duration": SECONDS, "--count": COUNT, "--max-rate": RATE, "--src": CIDR,
                                  "--dst": ADDRESS, "--proto": ["sctp"], "--netns": NETNS},
    ("watch",): {"--port": PORT},
    ("diagnose", "--port", "8079"): {"--timeout": SECONDS, "--proto": ["sctp"], "--netns": NETNS},
    ("diagnose",): {"--port": PORT},
    ("lab", "traffic", "no-such-instance"): {"--attempts": ["0", "101", "x"], "--timeout": SECONDS + ["0.01", "31"]},
    ("demo",): {"--scenario": ["no-such-scenario", ""]},
}

OTHERS = [
    ["drops", "--json", "--dropwatch"],
    ["watch"], ["diagnose"], ["diagnose", "--port", "8079", "--family", "6"], ["diagnose", "--port", "8079", "--probe", "--family", "5"],
    ["lab", "up", "no-such-scenario"], ["lab", "up", "forwarding-off", "--prefix", "ht bad name"],
    ["lab", "up", "forwarding-off", "--prefix", "ht" + "x" * 40],
    ["lab", "down"], ["lab", "down", "htx", "--all"], ["lab", "traffic", "no-such-instance"],
    ["lab", "no-such-subcommand"], ["no-such-command"],
] + [list(c) + ["--bogus"] for c in (("doctor",), ("drops",), ("watch",), ("diagnose",), ("demo",),
                                      ("lab",), ("lab", "list"), ("lab", "status"), ("lab", "up"))]


def cases():
    for command, options in COMMANDS.items():
        for option, values in options.items():
            for value in values:
                yield list(command) + [option, value]
    yield from OTHERS


CASES = list(cases())


def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(root):
    run_dir = hc.new_run_dir()
    host = hc.Host(run_dir)

    def one(args):
        try:
            p = hc.cli(run_dir, *args, timeout=30)
        except subprocess.TimeoutExpired:      # a value accepted: the command ran on
            return args, ["still running after 30 s"]
        lines = p.stderr.strip().splitlines()
        problems = []
        if p.returncode != 2:
            problems.append("exit %d" % p.returncode)
        if len(lines) != 1 or "Traceback" in p.stderr or not lines[0].startswith("dnattrace: "):
            problems.append("stderr %r" % p.stderr[-300:])
        if hc.files_under(run_dir):
            problems.append("state %s" % hc.files_under(run_dir))
        return args, problems

    with ThreadPoolExecutor(max_workers=3) as pool:
        failed = [(a, pr) for a, pr in pool.map(one, CASES) if pr]
    assert not failed, "\n".join("%s: %s" % (" ".join(a), "; ".join(pr)) for a, pr in failed)
    host.assert_same()
    assert len(CASES) > 100


@pytest.mark.parametrize("option,values", [("--interval", SECONDS), ("--count", COUNT)])
def test_the_table_covers_each_kind(option, values):
    """The generated table holds every (command, option, value) triple of the kinds above."""
    triples = {(c[0], c[-2], c[-1]) for c in CASES if len(c) >= 3}
    assert all(("drops", option, v) in triples for v in values)
    assert len(list(itertools.chain.from_iterable(COMMANDS.values()))) >= 20
