#!/usr/bin/env python3
"""The kernel matrix as CI measured it: one column per kernel (each guest's share, and the host's suite),
rows for what the kernel allows (doctor --json), the probe chosen for each journey point, and the tests
passed. Reads DIR/<kernel>/{kernel,doctor.json,junit.xml,rc,seconds}, as `scripts/test --kernels` leaves
them; prints a Markdown table and exits 1 unless every column ran and passed.

    scripts/vm/matrix.py /var/tmp/dnattrace-matrix
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

CAPABILITIES = [("BTF", "btf"), ("ring buffer", "ringbuf"), ("drop reasons (BTF enum)", "drop_reason_enum"),
                ("tp_btf", "tp_btf"), ("fentry / fexit", ("fentry", "fexit")), ("kprobe", "kprobe"),
                ("BPF netfilter link", "netfilter_link"), ("direct header loads", "direct_read")]
POINTS = ["device receive", "netfilter hooks", "hook verdict", "route decision", "route result", "drop"]


def read(d, name, default=""):
    try:
        with open(os.path.join(d, name)) as f:
            return f.read().strip()
    except OSError:
        return default


def doctor(d):
    caps, plan = {}, {}
    for line in read(d, "doctor.json").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "capability":
            caps[rec["name"]] = rec
        elif rec.get("type") == "plan":
            plan[rec["point"]] = rec
    return caps, plan


def capability(caps, names):
    names = names if isinstance(names, tuple) else (names,)
    cells = []
    for n in names:
        c = caps.get(n)
        if c is None:
            cells.append("?")
        elif n == "drop_reason_enum":
            cells.append("%s values" % c["value"] if c["ok"] else "**none** (reason inferred)")
        else:
            cells.append("yes" if c["ok"] else "**no**")
    return " / ".join(cells)


def counts(path):
    """{tests, failures, errors, skipped} of a junit file."""
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def tests(d):
    """(cell, passed?) from the share's junit files (the run, and the rerun of its failures) and exit code."""
    path = os.path.join(d, "junit.xml")
    rc = read(d, "rc", "?")
    if not os.path.exists(path):
        return "**did not run** (rc %s)" % rc, False
    n = counts(path)
    failed = n["failures"] + n["errors"]
    passed = n["tests"] - failed - n["skipped"]
    rerun = os.path.join(d, "rerun.xml")
    again = 0
    if failed and os.path.exists(rerun):
        r = counts(rerun)
        again = r["tests"] - r["failures"] - r["errors"] - r["skipped"]
        passed, failed = passed + again, failed - again
    cell = "%d passed" % passed
    if again:
        cell += " (%d of them on a second run)" % again
    if failed:
        cell += ", **%d failed**" % failed
    if n["skipped"]:
        cell += ", %d skipped" % n["skipped"]
    known = [l for l in read(d, "known-failures").splitlines() if l]
    if known:
        cell += ", **%d known failure%s left out** (%s)" % (len(known), "s" if len(known) > 1 else "",
                                                          ", ".join(k.split("::")[-1] for k in known))
    secs = read(d, "seconds")
    if secs:
        cell += " (%s s)" % secs
    return cell, rc == "0" and not failed


def main(argv):
    top = argv[1] if len(argv) > 1 else "/var/tmp/dnattrace-matrix"
    labels = sorted((l for l in os.listdir(top) if os.path.isdir(os.path.join(top, l))),
                    key=lambda l: (l == "host", [int(x) for x in l.split(".") if x.isdigit()]))
    cols = [(l, os.path.join(top, l)) for l in labels]
    docs = {l: doctor(d) for l, d in cols}
    head = ["%s%s" % (read(d, "kernel", l), " (host)" if l == "host" else "") for l, d in cols]
    rows = [["kernel"] + head, ["---"] * (len(cols) + 1)]
    for title, names in CAPABILITIES:
        rows.append([title] + [capability(docs[l][0], names) for l, _ in cols])
    for point in POINTS:
        rows.append(["probe: " + point] +
                    [((docs[l][1].get(point) or {}).get("probe") or "-").split(" (")[0] for l, _ in cols])
    ok = True
    cells = []
    for l, d in cols:
        cell, good = tests(d)
        ok &= good
        cells.append(cell)
    rows.append(["tests (host: the whole suite; guests: the `guest` share)"] + cells)
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    print(table)
    with open(os.path.join(top, "MATRIX.md"), "w") as f:
        f.write(table + "\n")
    return 0 if ok and cols else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
