"""The blind benchmark's harness: for each scenario, build it, check that it is broken, measure where the
kernel drops its packets with bpftrace (independently of dnattrace), run `diagnose`, judge its top
finding against the scenario's TRUTH, verify the scenario's fix, tear it down (always).

    python3 -m blind.run [--json] [--cli "python3 -m dnattrace.cli"] [NAME ...]
    python3 -m blind.run --table SAVED.jsonl      # the table of a saved --json run

Run from the repository root as root. Exit code: 0 when every scenario ran (whatever the verdicts),
1 when a scenario was broken (it worked before its fix, or its fix did not repair it), 2 on bad input.
"""
import argparse
import importlib
import json
import os
import pkgutil
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time

from blind import scenarios

UNEXPLAINED_IDS = ("unexplained", "nothing-arrived")
DIAG_TIMEOUT = 10
BPFTRACE = r"""
tracepoint:skb:kfree_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = (uint64)0;
  if ($skb->dev != 0) { $ns = $skb->dev->nd_net.net->ns.inum; }
  else { if ($skb->sk != 0) { $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; } }
  @[ksym(args->location), args->reason, $ns] = count();
}
"""


# ---- the judge (pure: tests/test_blind_judge.py) ----

def last_diagnosis(stdout):
    """The `diagnosis` record among diagnose's JSON lines, or None."""
    found = None
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("type") == "diagnosis":
            found = rec
    return found


def finding_text(finding):
    """What a finding says, as the judge reads it: explanation, evidence and fix."""
    parts = [finding.get("explanation") or ""] + list(finding.get("evidence") or []) + \
        list(finding.get("fix") or [])
    return "\n".join(str(p) for p in parts)


def judge(stdout, exit_code, right_if):
    """(verdict, cause id) for a broken host: RIGHT when the top finding names every right_if substring
    (an item "a|b" is named by either),
    UNEXPLAINED when diagnose said it could not explain (not wrong, not right), WRONG for any other cause
    or for "no fault", ERROR when diagnose gave no diagnosis at all (it crashed or could not observe)."""
    diag = last_diagnosis(stdout)
    if diag is None:
        return "ERROR", "exit %s" % exit_code
    findings = diag.get("findings") or []
    if exit_code == 0 or diag.get("healthy") or not findings:
        return "WRONG", diag.get("top_cause") or "no fault"
    top = findings[0]
    cause = top.get("cause_id") or diag.get("top_cause") or "?"
    if cause in UNEXPLAINED_IDS:
        return "UNEXPLAINED", cause
    text = finding_text(top).lower()
    if all(any(alt.lower() in text for alt in s.split("|")) for s in right_if):
        return "RIGHT", cause
    return "WRONG", cause


def fill(right_if, ctx):
    """right_if strings may name the instance's objects as {key} (keys of ctx["n"] and ctx's strings)."""
    keys = {k: v for k, v in ctx.items() if isinstance(v, (str, int))}
    keys.update(ctx.get("n") or {})
    return [s.format(**keys) for s in right_if]


def drop_agrees(truth_drop, measured):
    """Does the measured set of (function, reason) agree with TRUTH["drop"]: "function/REASON", several
    that must all be seen joined by " + ", alternatives joined by " or "; "none": no drop other than
    NOT_SPECIFIED."""
    seen = {key[:2] for key in measured}
    if truth_drop.strip() == "none":
        return not [1 for f, r in seen if r != "NOT_SPECIFIED"]
    return any(all(tuple(t.strip().split("/", 1)) in seen for t in alt.split(" + "))
               for alt in truth_drop.split(" or "))


def parse_bpftrace(text, reasons, inums):
    """{(function, REASON, namespace): count} of the map lines bpftrace printed, kept to our namespaces
    (inums: {inode: name})."""
    out = {}
    for m in re.finditer(r"@\[([^,\]]+), (\d+), (\d+)\]: (\d+)", text):
        func, reason, ns, n = m.group(1).strip(), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if ns in inums:
            key = (func.split("+")[0], reasons.get(reason, str(reason)), inums[ns])
            out[key] = out.get(key, 0) + n
    return out


# ---- the measurements (root, real kernel) ----

def drop_reasons():
    """{number: NAME} from the kfree_skb tracepoint's format file."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        path = base + "/events/skb/kfree_skb/format"
        if os.path.exists(path):
            text = open(path).read()
            return {int(n): name for n, name in re.findall(r'\{ (\d+), "(\w+)" \}', text)}
    return {}


def ns_inodes(ctx):
    """{inode: name} of the scenario's namespaces (the name without the instance's prefix)."""
    out = {}
    for ns in ctx.get("namespaces", []):
        try:
            out[os.stat("/run/netns/" + ns).st_ino] = ns.split("-", 1)[-1]
        except OSError:
            pass
    return out


def measure_drops(mod, ctx, attempts=3):
    """Where the kernel frees the scenario's packets while a few attempts run (bpftrace on kfree_skb,
    kept to the scenario's namespaces): {(function, REASON, namespace): count}, or None when bpftrace
    could not say (it did not attach or did not print its map in time: the machine is shared)."""
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, start_new_session=True)
    try:
        deadline = time.time() + 30
        line = ""
        while "Attaching" not in line and time.time() < deadline and p.poll() is None:
            line = p.stdout.readline()
        if "Attaching" not in line:
            return None
        time.sleep(0.5)
        for _ in range(attempts):
            mod.attempt(ctx)
        time.sleep(3.5 if mod.PROTO == "udp" or getattr(mod, "STALL", False) else 1.0)  # neigh timeouts
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return parse_bpftrace(out, drop_reasons(), ns_inodes(ctx))


def run_diagnose(mod, ctx, cli):
    """diagnose on the scenario's host while a background thread makes bounded attempts: (stdout, exit
    code, seconds from its start to its end)."""
    argv = shlex.split(cli) + ["diagnose", "--netns", ctx["host_netns"], "--port", str(ctx["port"]),
                               "--json", "--timeout", str(DIAG_TIMEOUT)]
    if mod.PROTO == "udp":
        argv += ["--proto", "udp"]
    stop = threading.Event()

    def traffic():
        time.sleep(1.0)                 # let diagnose attach first
        end = time.time() + DIAG_TIMEOUT + 15
        while not stop.is_set() and time.time() < end:
            mod.attempt(ctx)
            stop.wait(0.3)
    t = threading.Thread(target=traffic, daemon=True)
    start = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t.start()
    try:
        out, err = p.communicate(timeout=DIAG_TIMEOUT + 40)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    finally:
        stop.set()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    t.join(timeout=5)
    return out, p.returncode, round(time.time() - start, 1), err


def fix_verified(mod, ctx):
    mod.fix(ctx)
    for _ in range(3):
        if mod.attempt(ctx):
            return True
        time.sleep(0.5)
    return False


def run_one(name, cli):
    """One scenario end to end; the result as a dict (the --json record). Teardown always runs."""
    mod = importlib.import_module("blind.scenarios." + name)
    res = {"scenario": name, "source": mod.SOURCE, "family": mod.FAMILY, "proto": mod.PROTO,
           "stall": mod.STALL, "truth_drop": mod.TRUTH["drop"], "object": mod.TRUTH["object"]}
    ctx = {}
    prefix = "bl" + secrets.token_hex(3)
    try:
        ctx = mod.build(prefix) or ctx
        if mod.attempt(ctx):
            res.update(verdict="BROKEN", note="attempt() succeeds before the fix")
            return res
        drops = measure_drops(mod, ctx)
        if drops is None:                       # once more: bpftrace is slow to attach on a busy machine
            drops = measure_drops(mod, ctx)
        res["measured"] = None if drops is None else \
            ["%s/%s in %s x%d" % (f, r, ns, n) for (f, r, ns), n in sorted(drops.items(), key=lambda kv: -kv[1])]
        res["drop_agrees"] = None if drops is None else drop_agrees(mod.TRUTH["drop"], drops)
        out, rc, secs, err = run_diagnose(mod, ctx, cli)
        verdict, cause = judge(out, rc, fill(mod.TRUTH["right_if"], ctx))
        res.update(verdict=verdict, cause=cause, exit=rc, seconds=secs, right_if=fill(mod.TRUTH["right_if"], ctx))
        diag = last_diagnosis(out)
        if diag and diag.get("findings"):
            res["top_text"] = finding_text(diag["findings"][0])
        if verdict == "ERROR":
            res["stderr"] = err.strip()[-300:]
        res["fix_verified"] = fix_verified(mod, ctx)
        return res
    except Exception as e:      # a scenario that cannot be built is reported, the others still run
        res.update(verdict="BROKEN", note="%s: %s" % (type(e).__name__, e))
        return res
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C must not cut the teardown
        try:
            mod.teardown(ctx)
        finally:
            sweep(prefix)
            signal.signal(signal.SIGINT, old)


def sweep(prefix):
    """Belt and braces after a scenario's teardown (or a build that failed before it returned its ctx):
    end what runs in the namespaces named with this instance's prefix, then delete them."""
    for ns in _netns_list():
        if ns.startswith(prefix):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _netns_list():
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [l.split()[0] for l in p.stdout.splitlines() if l.strip()]


def all_scenarios():
    """The scenario modules (a helper module beside them, without TRUTH and build, is not one)."""
    names = sorted(m.name for m in pkgutil.iter_modules(scenarios.__path__) if not m.name.startswith("_"))
    return [n for n in names if all(hasattr(importlib.import_module("blind.scenarios." + n), a)
                                    for a in ("TRUTH", "build", "attempt", "fix", "teardown"))]


def table(results):
    rows = [("scenario", "fam/proto", "measured drops (bpftrace)", "agrees", "verdict", "cause printed", "s", "fix")]
    for r in results:
        top = "-" if "measured" not in r else \
            "bpftrace failed" if r["measured"] is None else "; ".join(r["measured"]) or "no drop"
        rows.append((r["scenario"], "v%d/%s%s" % (r["family"], r["proto"], " stall" if r["stall"] else ""),
                     top, {True: "yes", False: "NO", None: "-"}[r.get("drop_agrees")], r["verdict"],
                     r.get("cause", r.get("note", "")[:60]), str(r.get("seconds", "-")),
                     {True: "yes", False: "NO", None: "-"}[r.get("fix_verified")]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def totals(results):
    n = len(results)
    count = {v: sum(r["verdict"] == v for r in results) for v in ("RIGHT", "UNEXPLAINED", "WRONG", "ERROR", "BROKEN")}
    return "%d scenarios: %s" % (n, ", ".join("%s %d" % (k, v) for k, v in count.items() if v or k == "RIGHT"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m blind.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per scenario")
    ap.add_argument("--cli", default="%s -m dnattrace.cli" % sys.executable, help="how to run dnattrace")
    ap.add_argument("--table", metavar="FILE", help="print the table of a saved --json run and stop (no root)")
    ap.add_argument("names", nargs="*", metavar="NAME")
    args = ap.parse_args(argv)
    if args.table:
        try:
            saved = [json.loads(l) for l in open(args.table) if l.strip()]
        except (OSError, ValueError) as e:
            print("blind.run: cannot read %s: %s" % (args.table, e), file=sys.stderr)
            return 2
        print(table(saved))
        print(totals(saved))
        return 0
    known = all_scenarios()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print("blind.run: unknown scenario %s (known: %s)" % (", ".join(unknown), ", ".join(known)), file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("blind.run: needs root (namespaces, bpftrace)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)    # also when started in the background
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = []
    try:
        for name in args.names or known:
            r = run_one(name, args.cli)
            results.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print("%s: %s (%s)" % (name, r["verdict"], r.get("cause", r.get("note", ""))), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("blind.run: interrupted (the scenario under way was torn down)", file=sys.stderr)
        return 130
    if not args.json:
        print(table(results))
        print(totals(results))
    return 1 if any(r["verdict"] == "BROKEN" or r.get("fix_verified") is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
