"""How the CLI prints admin API replies: aligned tables, key/value blocks, or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def cell(value: Any) -> str:
    """One value as table text: lists joined, None as '-', times to the second."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    text = str(value)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":  # an ISO time
        return text[:19].replace("T", " ")
    return text


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    out: TextIO | None = None,
) -> None:
    """Print ``rows`` under ``columns`` (key, heading) with aligned columns."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    grid = [[heading for _, heading in columns]]
    grid += [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    for line in grid:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(), file=out)


def block(item: dict[str, Any], out: TextIO | None = None) -> None:
    """Print one object as ``key: value`` lines (nested lists of objects as sub-tables)."""
    out = out or sys.stdout
    width = max((len(k) for k in item), default=0)
    for key, value in item.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:", file=out)
            for entry in value:
                print("  - " + ", ".join(f"{k}={cell(v)}" for k, v in entry.items()), file=out)
        elif isinstance(value, dict):
            print(f"{key.ljust(width)}  {json.dumps(value, sort_keys=True)}", file=out)
        else:
            print(f"{key.ljust(width)}  {cell(value)}", file=out)


def dump_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True), file=out or sys.stdout)
