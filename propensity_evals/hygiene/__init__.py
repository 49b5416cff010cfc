"""The committed exclusion list: upstream items that are not questions, left out of every task.

``excluded.csv`` has one row per excluded item: ``file`` (relative to advanced-ai-risk/),
``line`` (1-based), ``question_sha256`` (of the raw ``question`` string: the loader refuses an
exclusion whose row no longer has that text), ``rule`` (the rule's name) and ``reason``.
``counts.csv`` has, per upstream file, its questions, the excluded ones per rule and the ones
scored (the group READMEs' tables are generated from it). Both are written by
``python -m propensity_evals.item_hygiene --write`` (propensity_evals/item_hygiene.py holds the
rules) and checked against the data by tests/test_item_hygiene.py.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import astuple, dataclass
from importlib import resources
from pathlib import Path

from propensity_evals.line_tables import read_line_table

EXCLUDED_FILE = "excluded.csv"
COUNTS_FILE = "counts.csv"
COLUMNS = ["file", "line", "question_sha256", "rule", "reason"]


class ExclusionError(ValueError):
    """An exclusion file that cannot be applied; the message is one line naming the row."""


@dataclass(frozen=True)
class Exclusion:
    file: str
    line: int
    question_sha256: str
    rule: str
    reason: str


def hygiene_path(name: str = EXCLUDED_FILE) -> Path:
    return Path(str(resources.files("propensity_evals.hygiene").joinpath(name)))


def exclusions_sha256(path: Path | None = None) -> str:
    return hashlib.sha256(Path(path or hygiene_path()).read_bytes()).hexdigest()


def load_exclusions(path: Path | None = None) -> dict[tuple[str, int], Exclusion]:
    """(file, line) -> its exclusion."""

    def exclusion(row: dict[str, str]) -> Exclusion:
        return Exclusion(row["file"], int(row["line"]), row["question_sha256"], row["rule"],
                         row["reason"])  # fmt: skip

    return read_line_table(Path(path or hygiene_path()), COLUMNS, exclusion, ExclusionError)


def exclusions_of(relpath: str, path: Path | None = None) -> dict[int, Exclusion]:
    """line -> exclusion, for one upstream file (relative to advanced-ai-risk/)."""
    return {line: item for (name, line), item in load_exclusions(path).items() if name == relpath}


def load_counts(path: Path | None = None) -> list[dict]:
    """The per-file counts, numbers as ints."""
    with open(Path(path or hygiene_path(COUNTS_FILE)), newline="", encoding="utf-8") as handle:
        return [
            {key: value if key == "file" else int(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def write_exclusions(exclusions: list[Exclusion], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(astuple(item) for item in exclusions)


def write_counts(counts: list[dict], rule_names: tuple[str, ...], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, ["file", "questions", *rule_names, "scored"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(counts)
