"""Tolerant, streaming reading of the dataset files.

Each file is read line by line in binary mode, so memory holds one line at a time whatever
the file size. A line that is not a usable document (not UTF-8, not JSON, not an object, no
string ``text``, blank) is yielded as a :class:`BadLine` with its line number: callers count
and report it, nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import manifest
from .errors import CorpusError
from .sources import SUFFIX, source_name

MAX_BAD_LINE_EXAMPLES = 1000  # per source: counts are exact, the listed examples are bounded


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def note_bad_line(stats, bad: BadLine) -> None:
    """Count a bad line on a per-source stats object; keep a bounded list of examples."""
    stats.bad_lines += 1
    if len(stats.bad_examples) < MAX_BAD_LINE_EXAMPLES:
        stats.bad_examples.append(bad)


def dataset_files(data_dir: Path, wanted: list[str] | None) -> dict[str, Path]:
    """The ``<source>.jsonl`` files to explore, with errors that say how to get them."""
    if not data_dir.is_dir():
        raise CorpusError(
            f"data directory {data_dir} does not exist; run `make alignment_data` first "
            "(or pass --data-dir)"
        )
    found = {}
    for path in sorted(data_dir.iterdir()):
        name = source_name(path.name)
        if name is not None and path.is_file():
            found[name] = path
    if not found:
        raise CorpusError(
            f"no <source>{SUFFIX} files in {data_dir}; run `make alignment_data` first "
            "(or pass --data-dir)"
        )
    if wanted is None:
        return found
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise CorpusError(
            f"unknown source(s) {', '.join(unknown)} in {data_dir}; valid sources: "
            f"{', '.join(found)}"
        )
    return {name: found[name] for name in wanted}


def manifest_notes(data_dir: Path, files: dict[str, Path]) -> dict[str, str]:
    """Per source, how the file on disk relates to the manifest (cheap: sizes only)."""
    try:
        entries = manifest.load(data_dir)
    except CorpusError as err:
        return dict.fromkeys(files, str(err))
    notes = {}
    for name, path in files.items():
        entry = entries.get(name)
        if entry is None:
            notes[name] = "not in manifest"
        elif entry.get("bytes") != path.stat().st_size:
            notes[name] = "size differs from manifest: rerun the download"
        else:
            notes[name] = f"revision {entry.get('revision', '?')}"
    return notes


def _parse(raw: bytes, file: str, number: int) -> dict | BadLine:
    if not raw.strip():
        return BadLine(file, number, "blank line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadLine(file, number, f"not valid UTF-8 (byte {err.start})")
    try:
        row = json.loads(text.rstrip("\r\n"))  # the line ending is not part of the error
    except ValueError as err:
        return BadLine(file, number, f"invalid JSON ({err})")
    if not isinstance(row, dict):
        return BadLine(file, number, f"not a JSON object ({type(row).__name__})")
    if "text" not in row:
        return BadLine(file, number, "missing `text`")
    if not isinstance(row["text"], str):
        kind = "null" if row["text"] is None else type(row["text"]).__name__
        return BadLine(file, number, f"`text` is {kind}, not a string")
    return row


def read_rows(path: Path, desc: str | None = None) -> Iterator[dict | BadLine]:
    """Yield each line's document (a dict) or its :class:`BadLine`, in file order."""
    pending = 0
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            desc=desc or path.name,
            unit="B",
            unit_scale=True,
            disable=None,  # a bar on a terminal, silent in captured logs
            leave=False,
        ) as bar,
    ):
        for number, raw in enumerate(handle, start=1):
            yield _parse(raw, path.name, number)
            pending += len(raw)
            if pending >= 1 << 22:  # updating per line would cost more than the parsing
                bar.update(pending)
                pending = 0
        bar.update(pending)
