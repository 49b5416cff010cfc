"""The two command-line flows, wiring the modules together and saying what happened.

Reports under ``<data-dir>/report/`` are regenerated in place (atomically) and the output says
when a previous one was replaced: a report is derived from the data, so the latest is the one
that matters, and a researcher who wants to keep an old one can copy it first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import CorpusError
from .jsonl import BadLine
from .sources import list_hub, list_local, parse_names, select

BAD_LINES_ON_STDERR = 5


def download(
    out_dir: Path, sources: str | None, revision: str | None, source_dir: Path | None
) -> int:
    from .fetch import fetch  # after argument checks, so errors stay fast

    names = parse_names(sources)
    listing = list_local(source_dir, revision) if source_dir else list_hub(revision)
    fetch(listing, select(listing, names), out_dir)
    return 0


def _warn_bad_lines(groups: list[tuple[str, int, list[BadLine]]], where: Path) -> None:
    total = sum(count for _, count, _ in groups)
    if not total:
        return
    per_source = ", ".join(f"{name} {count}" for name, count, _ in groups if count)
    examples = "; ".join(str(bad) for _, _, bads in groups for bad in bads[:BAD_LINES_ON_STDERR])
    print(
        f"warning: {total} bad line(s) skipped ({per_source}): {examples} — all listed in {where}",
        file=sys.stderr,
    )


def _say_replaced(paths: list[Path], existed: set[Path]) -> None:
    for path in paths:
        verb = "replaced previous" if path in existed else "wrote"
        print(f"{verb} {path}")


def explore(
    data_dir: Path,
    sources: str | None,
    pattern: str | None,
    max_hits: int,
    context: int,
) -> int:
    from .jsonl import dataset_files, manifest_notes

    if max_hits < 0 or context < 0:
        raise CorpusError("--max-hits and --context must be zero or more")
    files = dataset_files(data_dir, parse_names(sources))
    if pattern is not None:
        return _grep(data_dir, files, pattern, max_hits, context)

    from . import plots
    from .explore import explore as scan
    from .report import REPORT_DIR, write_reports

    report_dir = data_dir / REPORT_DIR
    stats = scan(files, manifest_notes(data_dir, files))
    targets = [
        report_dir / name
        for name in ("summary.md", "sources.csv", "docs_per_year.png", "length_distribution.png")
    ]
    existed = {path for path in targets if path.exists()}
    written = [
        plots.docs_per_year(stats, report_dir / "docs_per_year.png"),
        plots.length_distribution(stats, report_dir / "length_distribution.png"),
    ]
    written = write_reports(stats, data_dir, [path.name for path in written]) + written
    width = max(len(item.source) for item in stats)
    for item in stats:
        dates = f"{item.first_date:%Y-%m-%d}..{item.last_date:%Y-%m-%d}" if item.first_date else "-"
        print(
            f"{item.source:<{width}}  {item.documents:>8,} docs  {item.words:>12,} words  "
            f"{dates:<22}  bad {item.bad_lines:,}  dup ids {item.duplicate_ids:,}  "
            f"dup urls {item.duplicate_urls:,}"
        )
    _say_replaced(written, existed)
    _warn_bad_lines(
        [(item.source, item.bad_lines, item.bad_examples) for item in stats], written[0]
    )
    return 0


def _grep(data_dir: Path, files: dict[str, Path], pattern: str, max_hits: int, context: int) -> int:
    from .grep import compile_pattern, counts_table, grep, slug, write_grep_report

    compile_pattern(pattern)  # fail on a bad regex before reading anything
    path = data_dir / "report" / f"grep_{slug(pattern)}.md"
    existed = {path} if path.exists() else set()
    results = grep(files, pattern, max_hits=max_hits, context=context)
    write_grep_report(results, pattern, data_dir)
    print("\n".join(counts_table(results)))
    _say_replaced([path], existed)
    _warn_bad_lines([(item.source, item.bad_lines, item.bad_examples) for item in results], path)
    return 0
