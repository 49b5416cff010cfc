#!/usr/bin/env python
"""Summarise the downloaded alignment-research corpus, or size a keyword filter over it.

Streams every <source>.jsonl line by line and writes <data-dir>/report/: summary.md,
sources.csv, docs_per_year.png, length_distribution.png. With --grep PATTERN it instead counts
and lists the documents matching a case-insensitive regex (report/grep_<slug>.md).

    python explore_dataset.py
    python explore_dataset.py --grep "mesa.?optimi[sz]" --sources lesswrong,alignmentforum
"""

import argparse
import sys
from pathlib import Path

from propensity_evals.alignment_corpus import DEFAULT_DATA_DIR
from propensity_evals.alignment_corpus.commands import explore
from propensity_evals.alignment_corpus.errors import run_guarded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR), help="dataset folder (%(default)s)"
    )
    parser.add_argument("--sources", help="comma-separated source names (default: all on disk)")
    parser.add_argument(
        "--grep",
        metavar="PATTERN",
        help="count/list documents matching this case-insensitive regex (title and text) "
        "into report/grep_<slug>.md, instead of the summary report",
    )
    parser.add_argument(
        "--max-hits", type=int, default=20, help="matches listed per source (%(default)s)"
    )
    parser.add_argument(
        "--context", type=int, default=80, help="snippet characters around a match (%(default)s)"
    )
    args = parser.parse_args()
    return run_guarded(
        lambda: explore(args.data_dir, args.sources, args.grep, args.max_hits, args.context)
    )


if __name__ == "__main__":
    sys.exit(main())
