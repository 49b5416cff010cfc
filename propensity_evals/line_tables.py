"""Reading the pack's committed tables keyed by an upstream item: ``file``, ``line``, ...

The audit's relabel file and the hygiene exclusion list share their shape: one CSV row per
upstream item, named by ``file`` (relative to advanced-ai-risk/) and ``line`` (1-based), with
the ``question_sha256`` it was written for. Both are read here, so that a bad header, a bad
field and a twice-listed item are refused the same way, in one line naming the row.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Item = TypeVar("Item")


def read_line_table(
    path: Path,
    columns: list[str],
    make_item: Callable[[dict[str, str]], Item],
    error: type[ValueError],
) -> dict[tuple[str, int], Item]:
    """(file, line) -> ``make_item(row)`` for each row of the CSV at ``path``.

    ``make_item`` raises ``ValueError`` (or ``TypeError``) for a row it cannot take; that, a
    header other than ``columns`` and an item listed twice raise ``error`` naming
    ``path:row``."""
    found: dict[tuple[str, int], Item] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != columns:
            raise error(f"{path}: the header must be {','.join(columns)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                item = make_item(row)
                key = (row["file"], int(row["line"]))
            except (TypeError, ValueError) as problem:
                raise error(f"{path}:{lineno}: {problem}") from None
            if key in found:
                raise error(f"{path}:{lineno}: {key[0]}:{key[1]} is listed twice")
            found[key] = item
    return found
