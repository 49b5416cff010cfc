"""Move a finished run from its staging folder into OUTPUT_DIR, never leaving half a file.

Each array task evaluates into CLUSTER_DIR/staging/<task>/ and only a complete run is moved
into ``OUTPUT_DIR/<run_name>/``. A task cancelled, preempted or killed mid-run therefore leaves
its output folder as it was: the sweep sees the run as still to do and `make report` never
meets a truncated file. Each file is copied under a hidden temporary name beside its
destination, then renamed (atomic on one filesystem, and the staging folder may sit on
another); results files go last, since they are what marks a task as present. A file already
there is never replaced by different bytes (lm-eval's files are timestamped, so a run of another
fingerprint goes beside the old one), except ``run_info.json``, the record of the latest run.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from propensity_evals.run_identity import RUN_INFO_FILE

# The launcher's record of the latest run in a folder: rewritten by every run, as locally.
REWRITTEN = {RUN_INFO_FILE}


class PublishRefused(RuntimeError):
    """A file of the run folder would be replaced by different bytes; nothing was written."""


def is_results_file(path: Path) -> bool:
    return path.name.startswith("results_") and path.suffix == ".json"


def publish(staged_run: Path, run_dir: Path) -> list[Path]:
    """Copy every file of ``staged_run`` into ``run_dir`` (same relative paths); returns them."""
    files = sorted(path for path in staged_run.rglob("*") if path.is_file())
    ordered = [path for path in files if not is_results_file(path)]
    ordered += [path for path in files if is_results_file(path)]
    for source in ordered:
        target = run_dir / source.relative_to(staged_run)
        if target.name not in REWRITTEN and target.exists() and not same_bytes(source, target):
            raise PublishRefused(f"{target} already exists with other content: not replaced")
    written = []
    for source in ordered:
        target = run_dir / source.relative_to(staged_run)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.partial")
        shutil.copy2(source, temporary)
        os.replace(temporary, target)
        written.append(target)
    return written


def same_bytes(one: Path, other: Path) -> bool:
    """A requeued task may publish a file it published before: the same bytes are no conflict."""
    return filecmp.cmp(one, other, shallow=False)
