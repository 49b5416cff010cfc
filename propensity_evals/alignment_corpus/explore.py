"""Per-source statistics in one streaming pass.

What is kept per source grows at most with the number of documents (8-byte digests of ids and
urls for duplicate detection) or of distinct authors/keys/years, never with their text: word
counts go into fixed histogram bins and only a few sample titles are held.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import blake2b
from pathlib import Path

from .jsonl import BadLine, note_bad_line, read_rows

COMMON_FIELDS = (
    "id",
    "source",
    "title",
    "text",
    "url",
    "date_published",
    "authors",
    "source_type",
    "summaries",
)
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Word-count bins (left edges); the last bin is open-ended.
LENGTH_BINS = (0, 1, 10, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
SAMPLE_TITLES = 5
MAX_DUPLICATE_EXAMPLES = 5


def length_bin_labels() -> list[str]:
    labels = []
    for left, right in zip(LENGTH_BINS, LENGTH_BINS[1:] + (None,), strict=True):
        if right is None:
            labels.append(f"{left:,}+")
        else:
            labels.append(f"{left:,}" if right - 1 == left else f"{left:,}-{right - 1:,}")
    return labels


def _digest(value: object) -> bytes:
    return blake2b(str(value).encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _is_empty(value: object) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict):
        return not value
    return False


@dataclass
class SourceStats:
    source: str
    file: str
    manifest_note: str = ""
    lines: int = 0
    documents: int = 0
    words: int = 0
    max_words: int = 0
    first_date: datetime | None = None
    last_date: datetime | None = None
    invalid_dates: int = 0
    per_year: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)  # key absent
    null: Counter = field(default_factory=Counter)  # key present, value null
    empty: Counter = field(default_factory=Counter)  # "", whitespace, [] or {}
    extra_keys: Counter = field(default_factory=Counter)
    authors: Counter = field(default_factory=Counter)
    duplicate_ids: int = 0
    duplicate_urls: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    urls_in_other_sources: int = 0
    length_hist: list[int] = field(default_factory=lambda: [0] * len(LENGTH_BINS))
    sample_titles: list[str] = field(default_factory=list)
    bad_lines: int = 0
    bad_examples: list[BadLine] = field(default_factory=list)

    @property
    def mean_words(self) -> float:
        return self.words / self.documents if self.documents else 0.0


class _Scanner:
    """Holds the cross-source state (url digests -> first source) while files are scanned."""

    def __init__(self, seed: int = 0) -> None:
        self.url_owner: dict[bytes, str] = {}
        self.seed = seed

    def scan(self, source: str, path: Path, note: str = "") -> SourceStats:
        stats = SourceStats(source=source, file=path.name, manifest_note=note)
        seen_ids: set[bytes] = set()
        seen_urls: set[bytes] = set()
        # A seeded reservoir: titles spread over the whole file, the same on every run.
        rng = random.Random(f"{self.seed}:{source}")
        titles_seen = 0
        for row in read_rows(path, desc=source):
            stats.lines += 1
            if isinstance(row, BadLine):
                note_bad_line(stats, row)
                continue
            stats.documents += 1
            self._fields(stats, row)
            words = len(row["text"].split())
            stats.words += words
            stats.max_words = max(stats.max_words, words)
            stats.length_hist[bisect_right(LENGTH_BINS, words) - 1] += 1
            self._date(stats, row.get("date_published"))
            self._authors(stats, row.get("authors"))
            self._duplicates(stats, row, seen_ids, seen_urls)
            title = row.get("title")
            if isinstance(title, str) and title.strip():
                titles_seen += 1
                if len(stats.sample_titles) < SAMPLE_TITLES:
                    stats.sample_titles.append(title.strip())
                else:
                    slot = rng.randrange(titles_seen)
                    if slot < SAMPLE_TITLES:
                        stats.sample_titles[slot] = title.strip()
        return stats

    @staticmethod
    def _fields(stats: SourceStats, row: dict) -> None:
        for name in COMMON_FIELDS:
            if name not in row:
                stats.missing[name] += 1
            elif row[name] is None:
                stats.null[name] += 1
            elif _is_empty(row[name]):
                stats.empty[name] += 1
        for key in row:
            if key not in COMMON_FIELDS:
                stats.extra_keys[key] += 1

    @staticmethod
    def _date(stats: SourceStats, value: object) -> None:
        if value is None or value == "":
            return  # already counted as null/empty/missing
        try:
            when = datetime.strptime(str(value), DATE_FORMAT)
        except ValueError:
            stats.invalid_dates += 1
            return
        stats.per_year[when.year] += 1
        if stats.first_date is None or when < stats.first_date:
            stats.first_date = when
        if stats.last_date is None or when > stats.last_date:
            stats.last_date = when

    @staticmethod
    def _authors(stats: SourceStats, value: object) -> None:
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for name in names:
            if isinstance(name, str) and name.strip():
                stats.authors[name.strip()] += 1

    def _duplicates(
        self, stats: SourceStats, row: dict, seen_ids: set[bytes], seen_urls: set[bytes]
    ) -> None:
        doc_id = row.get("id")
        if doc_id not in (None, ""):
            key = _digest(doc_id)
            if key in seen_ids:
                stats.duplicate_ids += 1
                if len(stats.duplicate_examples) < MAX_DUPLICATE_EXAMPLES:
                    stats.duplicate_examples.append(f"id {doc_id}")
            seen_ids.add(key)
        url = row.get("url")
        if url not in (None, ""):
            key = _digest(url)
            if key in seen_urls:
                stats.duplicate_urls += 1
                if len(stats.duplicate_examples) < MAX_DUPLICATE_EXAMPLES:
                    stats.duplicate_examples.append(f"url {url}")
            else:
                seen_urls.add(key)
                owner = self.url_owner.setdefault(key, stats.source)
                if owner != stats.source:
                    stats.urls_in_other_sources += 1


def explore(files: dict[str, Path], notes: dict[str, str] | None = None) -> list[SourceStats]:
    """Scan every file in order; urls are also checked for overlap between sources."""
    scanner = _Scanner()
    notes = notes or {}
    return [scanner.scan(name, path, notes.get(name, "")) for name, path in files.items()]
