"""Write the exploration results: ``summary.md`` (for people) and ``sources.csv`` (for code)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .explore import COMMON_FIELDS, SourceStats, length_bin_labels
from .files import atomic_write_text

TOP_AUTHORS = 10
REPORT_DIR = "report"


def _date(value) -> str:
    return value.strftime("%Y-%m-%d") if value else ""


def _cell(text: object) -> str:
    """Keep a value inside its Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def sources_frame(stats: list[SourceStats]) -> pd.DataFrame:
    rows = []
    for item in stats:
        row = {
            "source": item.source,
            "file": item.file,
            "documents": item.documents,
            "words": item.words,
            "mean_words": round(item.mean_words, 1),
            "max_words": item.max_words,
            "first_date": _date(item.first_date),
            "last_date": _date(item.last_date),
            "invalid_dates": item.invalid_dates,
            "bad_lines": item.bad_lines,
            "duplicate_ids": item.duplicate_ids,
            "duplicate_urls": item.duplicate_urls,
            "urls_in_other_sources": item.urls_in_other_sources,
            "distinct_authors": len(item.authors),
            "manifest": item.manifest_note,
        }
        for name in COMMON_FIELDS:
            row[f"missing_{name}"] = item.missing[name]
            row[f"null_{name}"] = item.null[name]
            row[f"empty_{name}"] = item.empty[name]
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(stats: list[SourceStats], data_dir: Path, plots: list[str]) -> str:
    frame = sources_frame(stats)
    total_docs = int(frame["documents"].sum())
    total_bad = int(frame["bad_lines"].sum())
    out = [
        "# Alignment-research corpus: summary",
        "",
        f"Data: `{data_dir}` · generated {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} · "
        f"{len(stats)} sources · {total_docs:,} documents · "
        f"{int(frame['words'].sum()):,} words · {total_bad:,} bad lines",
        "",
        "Words are whitespace-separated tokens of `text`. Duplicates are counted within a "
        "source (repeats after the first); `urls elsewhere` counts urls first seen in an "
        "earlier source.",
        "",
        "| source | documents | words | mean words | dates | bad lines | dup ids | dup urls "
        "| urls elsewhere | manifest |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for item in stats:
        dates = f"{_date(item.first_date)} → {_date(item.last_date)}" if item.first_date else "—"
        out.append(
            f"| {item.source} | {item.documents:,} | {item.words:,} | {item.mean_words:,.0f} "
            f"| {dates} | {item.bad_lines:,} | {item.duplicate_ids:,} | {item.duplicate_urls:,} "
            f"| {item.urls_in_other_sources:,} | {_cell(item.manifest_note)} |"
        )
    out += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    for item in stats:
        out += _source_section(item)
    out += ["", "## Bad lines", ""]
    if not total_bad:
        out.append("None.")
    for item in stats:
        if not item.bad_lines:
            continue
        out.append(f"- **{item.source}**: {item.bad_lines:,} bad line(s)")
        out += [f"  - {_cell(bad)}" for bad in item.bad_examples]
        if item.bad_lines > len(item.bad_examples):
            out.append(f"  - … and {item.bad_lines - len(item.bad_examples):,} more")
    return "\n".join(out) + "\n"


def _source_section(item: SourceStats) -> list[str]:
    out = ["", f"## {item.source}", ""]
    out.append(
        f"{item.lines:,} lines in `{item.file}`: {item.documents:,} documents, "
        f"{item.bad_lines:,} bad. Invalid dates: {item.invalid_dates:,}."
    )
    gaps = [
        f"| {name} | {item.missing[name]:,} | {item.null[name]:,} | {item.empty[name]:,} |"
        for name in COMMON_FIELDS
        if item.missing[name] or item.null[name] or item.empty[name]
    ]
    out += ["", "Missing, null or empty fields:", ""]
    if gaps:
        out += ["| field | missing | null | empty |", "|---|---:|---:|---:|", *gaps]
    else:
        out.append("none")
    extra = ", ".join(f"`{key}` ({count:,})" for key, count in item.extra_keys.most_common())
    out += ["", f"Source-specific keys: {extra or 'none'}"]
    authors = ", ".join(
        f"{_cell(name)} ({count:,})" for name, count in item.authors.most_common(TOP_AUTHORS)
    )
    out += ["", f"Top authors: {authors or 'none'}"]
    hist = ", ".join(
        f"{label}: {count:,}"
        for label, count in zip(length_bin_labels(), item.length_hist, strict=True)
        if count
    )
    out += ["", f"Length (words): {hist or 'no documents'}; max {item.max_words:,}"]
    if item.duplicate_examples:
        out += ["", "Duplicate examples: " + "; ".join(_cell(x) for x in item.duplicate_examples)]
    out += ["", "Sample titles:", ""]
    out += [f"- {_cell(title)}" for title in item.sample_titles] or ["- (none)"]
    return out


def write_reports(stats: list[SourceStats], data_dir: Path, plots: list[str]) -> list[Path]:
    """Write ``summary.md`` and ``sources.csv`` under ``<data_dir>/report/`` atomically."""
    report_dir = data_dir / REPORT_DIR
    summary = report_dir / "summary.md"
    csv = report_dir / "sources.csv"
    atomic_write_text(summary, summary_markdown(stats, data_dir, plots))
    atomic_write_text(csv, sources_frame(stats).to_csv(index=False, lineterminator="\n"))
    return [summary, csv]
