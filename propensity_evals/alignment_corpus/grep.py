"""Size a keyword filter: which documents match a regex, per source, with snippets.

Matching is case-insensitive over ``title`` and ``text``. Counts are exact; the listed
matches are capped per source so the report stays readable on broad patterns.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorpusError
from .files import atomic_write_text
from .jsonl import BadLine, note_bad_line, read_rows


@dataclass
class Hit:
    title: str
    url: str
    line: int
    snippet: str


@dataclass
class GrepStats:
    source: str
    documents: int = 0
    matching: int = 0
    matches: int = 0  # occurrences, a document can match several times
    hits: list[Hit] = field(default_factory=list)
    bad_lines: int = 0
    bad_examples: list[BadLine] = field(default_factory=list)


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise CorpusError(f"--grep {pattern!r} is not a valid regular expression: {err}") from err


def slug(pattern: str) -> str:
    """A file-name-safe name; the short hash keeps e.g. ``mesa.optim`` and ``mesa-optim`` apart."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", pattern).strip("_")[:40] or "pattern"
    return f"{readable}_{hashlib.sha1(pattern.encode()).hexdigest()[:6]}"


def _snippet(text: str, match: re.Match, context: int) -> str:
    start, end = max(0, match.start() - context), min(len(text), match.end() + context)
    inner = f"{text[start : match.start()]}**{match.group(0)}**{text[match.end() : end]}"
    inner = " ".join(inner.split())
    return f"{'…' if start else ''}{inner}{'…' if end < len(text) else ''}"


def grep_source(
    source: str, path: Path, regex: re.Pattern, max_hits: int, context: int
) -> GrepStats:
    stats = GrepStats(source=source)
    for row in read_rows(path, desc=source):
        if isinstance(row, BadLine):
            note_bad_line(stats, row)
            continue
        stats.documents += 1
        title = row.get("title") if isinstance(row.get("title"), str) else ""
        found = 0
        first = None
        for field_text in (title, row["text"]):
            for match in regex.finditer(field_text):
                found += 1
                if first is None:
                    first = (field_text, match)
        if not found:
            continue
        stats.matching += 1
        stats.matches += found
        if len(stats.hits) < max_hits:
            url = row.get("url") if isinstance(row.get("url"), str) else ""
            number = stats.documents + stats.bad_lines  # this row's line number
            stats.hits.append(Hit(title, url, number, _snippet(*first, context)))
    return stats


def grep(
    files: dict[str, Path], pattern: str, max_hits: int = 20, context: int = 80
) -> list[GrepStats]:
    regex = compile_pattern(pattern)
    return [grep_source(name, path, regex, max_hits, context) for name, path in files.items()]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def counts_table(results: list[GrepStats]) -> list[str]:
    lines = [
        "| source | documents | matching | share | matches | bad lines |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for item in results + [_total(results)]:
        share = item.matching / item.documents if item.documents else 0.0
        lines.append(
            f"| {item.source} | {item.documents:,} | {item.matching:,} | {share:.1%} "
            f"| {item.matches:,} | {item.bad_lines:,} |"
        )
    return lines


def _total(results: list[GrepStats]) -> GrepStats:
    total = GrepStats(source="**all**")
    for item in results:
        total.documents += item.documents
        total.matching += item.matching
        total.matches += item.matches
        total.bad_lines += item.bad_lines
    return total


def grep_markdown(results: list[GrepStats], pattern: str, data_dir: Path) -> str:
    out = [
        f"# Documents matching `{_cell(pattern)}`",
        "",
        f"Data: `{data_dir}` · generated {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} · "
        "case-insensitive regex over `title` and `text`",
        "",
        *counts_table(results),
    ]
    for item in results:
        if not item.matching:
            continue
        shown = f", first {len(item.hits)} shown" if item.matching > len(item.hits) else ""
        out += ["", f"## {item.source} ({item.matching:,} matching documents{shown})", ""]
        for hit in item.hits:
            title = _cell(hit.title) or "(untitled)"
            link = f"[{title}]({hit.url})" if hit.url else title
            out.append(f"- {link} (line {hit.line}): {_cell(hit.snippet)}")
    bad = [bad for item in results for bad in item.bad_examples]
    if bad:
        out += ["", "## Bad lines (skipped)", ""] + [f"- {_cell(str(b))}" for b in bad]
    return "\n".join(out) + "\n"


def write_grep_report(results: list[GrepStats], pattern: str, data_dir: Path) -> Path:
    path = data_dir / "report" / f"grep_{slug(pattern)}.md"
    atomic_write_text(path, grep_markdown(results, pattern, data_dir))
    return path
