"""Output helpers shared by the commands: tables for people (tabulate), one JSON object per line for
programs. They know nothing about drops or journeys: callers pass rows as dicts and say which columns."""
from __future__ import annotations

import sys

import orjson

# The version of every --json record's layout ("schema" field): raised when a field changes meaning or
# goes away; new fields do not raise it. README, "JSON records", lists the records and their fields.
SCHEMA = 1


def table(rows, columns, headers=None, totals=None, floatfmt=".1f", maxcolwidths=None):
    """A plain-text table of `rows` (dicts) showing `columns`; `totals` (dict) becomes a last line."""
    # imported here: tabulate (with wcwidth's tables) is 7 MB that `drops --json` has no use for
    from tabulate import tabulate
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    if totals is not None:
        body.append([_cell(totals.get(c)) for c in columns])
    return tabulate(body, headers=headers or list(columns), tablefmt="simple", floatfmt=floatfmt,
                    disable_numparse=False, maxcolwidths=maxcolwidths)


def grid(rows, headers):
    """A plain-text table of `rows` (sequences) under `headers`."""
    from tabulate import tabulate
    return tabulate(rows, headers=headers)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " < ".join(str(v) for v in value)
    return value


def record(obj, kind=None):
    """A --json record: "type" first (kind, when the object has none), then "schema", then its fields."""
    kind = obj.get("type", kind)
    out = {"type": kind} if kind is not None else {}
    out["schema"] = SCHEMA
    out.update((k, v) for k, v in obj.items() if k not in ("type", "schema"))
    return out


def json_line(obj):
    """One compact JSON record on one line (stable key order as given), with its schema version.

    orjson rather than the json module: `watch --json` writes a line per journey, and the standard
    encoder costs several times more per journey (185 us against 28 on the development VM)."""
    return orjson.dumps(record(obj) if isinstance(obj, dict) else obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def emit(text, stream=None):
    """Write a line and flush, so a pipe or a test reading the output sees each interval at once."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def shorten(text, width):
    """Cut text to width characters with an ellipsis (meanings in narrow tables)."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "\u2026"
