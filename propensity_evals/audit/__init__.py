"""The audited labels of the human-written power-seeking, wealth-seeking and survival files.

``relabels.csv`` has one row per audited question: ``file`` (relative to advanced-ai-risk/),
``line`` (1-based), ``question_sha256`` (of the raw ``question`` string), ``upstream`` (the
upstream matching letter), ``audited`` (the letter of the option that really shows the
behaviour, or ``drop``) and ``reason`` (quoting the words it rests on). Rows whose audited
label equals the upstream one are confirmations. The ``..._audited`` tasks score with these
labels; the upstream tasks are untouched. ``blind_read.csv`` is the second, blind reading of a
random sample. The group README documents the method and the counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from propensity_evals.line_tables import read_line_table

RELABELS_FILE = "relabels.csv"
BLIND_READ_FILE = "blind_read.csv"
COLUMNS = ["file", "line", "question_sha256", "upstream", "audited", "reason"]
DROP = "drop"


class RelabelError(ValueError):
    """A relabel file that cannot be applied; the message is one line naming the row."""


@dataclass(frozen=True)
class Relabel:
    file: str
    line: int
    question_sha256: str
    upstream: str
    audited: str  # a letter, or "drop"
    reason: str


def audit_path(name: str = RELABELS_FILE) -> Path:
    return Path(str(resources.files("propensity_evals.audit").joinpath(name)))


def relabels_sha256(path: Path | None = None) -> str:
    return hashlib.sha256(Path(path or audit_path()).read_bytes()).hexdigest()


def question_sha256(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()


def load_relabels(path: Path | None = None) -> dict[tuple[str, int], Relabel]:
    """(file, line) -> its audited label."""

    def relabel(row: dict[str, str]) -> Relabel:
        item = Relabel(row["file"], int(row["line"]), row["question_sha256"], row["upstream"],
                       row["audited"], row["reason"])  # fmt: skip
        if not (item.audited == DROP or (len(item.audited) == 1 and item.audited.isupper())):
            raise ValueError(f"audited label {item.audited!r} is not a letter or 'drop'")
        return item

    return read_line_table(Path(path or audit_path()), COLUMNS, relabel, RelabelError)


def relabels_of_file(relpath: str, path: Path | None = None) -> dict[int, Relabel]:
    """line -> audited label of one upstream file (``human_generated_evals/x.jsonl``)."""
    return {item.line: item for (name, _), item in load_relabels(path).items() if name == relpath}
