"""Render helpers: tables and JSON lines."""
import io
import json

from dnattrace.output import tables


def test_table_has_headers_rows_and_totals():
    rows = [{"count": 5, "location": "ip_error+0x68", "stack": ["a", "b"]}, {"count": 2, "location": "x"}]
    text = tables.table(rows, ("count", "location", "stack"), totals={"count": 7, "location": "total"})
    lines = text.splitlines()
    assert lines[0].split() == ["count", "location", "stack"]
    assert "ip_error+0x68" in lines[2] and "a < b" in lines[2]
    assert lines[-1].split() == ["7", "total"]


def test_json_line_is_one_compact_line():
    line = tables.json_line({"a": 1, "b": [1, 2], "c": None})
    assert "\n" not in line and json.loads(line) == {"schema": 1, "a": 1, "b": [1, 2], "c": None}


def test_emit_and_shorten():
    out = io.StringIO()
    tables.emit("hello", out)
    assert out.getvalue() == "hello\n"
    assert tables.shorten("abcdef", 4) == "abc\u2026"
    assert tables.shorten("abc", 4) == "abc" and tables.shorten(None, 3) is None
