#!/usr/bin/env python
"""Fetch the StampyAI alignment-research dataset (per-source JSONL files) into a local folder.

Resumable and verified: complete sources (size and sha256 as in the manifest) are skipped,
new files are installed atomically, and <out>/manifest.json records what is on disk.

    python download_alignment_dataset.py                          # every source, branch main
    python download_alignment_dataset.py --sources lesswrong,arxiv --revision <commit>
    python download_alignment_dataset.py --source-dir /mnt/mirror # offline mirror
"""

import argparse
import sys
from pathlib import Path

from propensity_evals.alignment_corpus import DEFAULT_DATA_DIR, REPO_ID
from propensity_evals.alignment_corpus.commands import download
from propensity_evals.alignment_corpus.errors import run_guarded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sources", help="comma-separated source names (default: every source listed remotely)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_DATA_DIR), help="output folder (%(default)s)"
    )
    parser.add_argument(
        "--revision",
        help=f"branch, tag or commit of {REPO_ID} (default: main; the resolved commit is "
        "recorded). With --source-dir: the label recorded for the mirror (default local:<dir>)",
    )
    parser.add_argument(
        "--source-dir", type=Path, help="copy the <source>.jsonl files from this offline mirror"
    )
    args = parser.parse_args()
    return run_guarded(lambda: download(args.out, args.sources, args.revision, args.source_dir))


if __name__ == "__main__":
    sys.exit(main())
