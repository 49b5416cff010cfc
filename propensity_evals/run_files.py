"""What a run folder holds on disk, and when a task in it counts as complete.

The launcher and lm-eval lay a run out as::

    OUTPUT_DIR/<run_name>/run_info.json
    OUTPUT_DIR/<run_name>/<sanitized model>/results_<timestamp>.json
    OUTPUT_DIR/<run_name>/<sanitized model>/samples_<task>_<timestamp>.jsonl

A folder can hold several results files (a re-run, or tasks added later). For each task the
latest results file that holds it counts (chosen with lm-eval's own ``get_latest_filename``),
with the sample log written with it (same timestamp). Hidden folders are skipped: the launcher
lets lm-eval write into ``.incomplete-*/`` and moves the files in only once they are complete.

A task is complete for a requested fingerprint when its latest results file records that
fingerprint and its sample log holds, in lines that all parse, as many questions as the results
file says it scored. The launcher (before promoting a run), the sweep (before skipping one) and
the report (before reading one) all use this module.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lm_eval.utils import (
    get_file_datetime,
    get_file_task_name,
    get_latest_filename,
    get_results_filenames,
    get_sample_results_filenames,
)

from propensity_evals.catalog import task_files
from propensity_evals.run_identity import results_fingerprint

RERUN_HINT = "re-run that model (`make sweep` re-runs incomplete runs) or delete the file"
STAGING_PREFIX = ".incomplete-"
PACK_TASKS = list(task_files())


class RunFileError(RuntimeError):
    """A run file that cannot be read; the message is one line naming it."""


@dataclass
class TaskFiles:
    """Where one task's numbers come from in a run folder."""

    results_path: Path
    results: dict
    samples_path: Path | None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not UTF-8 text; {RERUN_HINT}") from None
    except json.JSONDecodeError as error:
        raise RunFileError(
            f"{path}: truncated or invalid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); {RERUN_HINT}"
        ) from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: expected a JSON object; {RERUN_HINT}")
    return data


def _stamp(filename: str) -> str:
    return get_file_datetime(filename).removesuffix(".json")


def _visible_files(run_dir: Path) -> list[str]:
    # Paths relative to the run folder, so that the folder's own name cannot look like a
    # results file to lm-eval's substring matching.
    listing = []
    for path in run_dir.rglob("*"):
        relative = path.relative_to(run_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            listing.append("./" + relative.as_posix())
    return sorted(listing)


def results_files(run_dir: Path, strict: bool = True) -> dict[str, dict]:
    """Every readable results file of a run folder (relative name -> parsed JSON)."""
    parsed = {}
    for name in get_results_filenames(_visible_files(Path(run_dir))):
        if not name.endswith(".json"):
            continue
        try:
            parsed[name] = read_json(Path(run_dir) / name)
        except RunFileError:
            if strict:
                raise
    return parsed


def locate_tasks(run_dir: Path, strict: bool = True) -> dict[str, TaskFiles]:
    """task -> its latest results file and the sample log written with it.

    ``strict=False`` (the completeness checks) skips unreadable results files instead of
    raising: a damaged run is simply not complete.
    """
    run_dir = Path(run_dir)
    parsed = results_files(run_dir, strict)
    holding: dict[str, list[str]] = defaultdict(list)
    for name, data in parsed.items():
        for task in data.get("configs") or {}:
            if task in PACK_TASKS:
                holding[task].append(name)
    samples: dict[tuple[str, str, str], str] = {}
    for name in get_sample_results_filenames(_visible_files(run_dir)):
        folder, _, base = name.rpartition("/")
        samples[(folder, get_file_task_name(base), _stamp(base))] = name
    located = {}
    for task, names in holding.items():
        latest = get_latest_filename(names)
        folder, _, base = latest.rpartition("/")
        sample = samples.get((folder, task, _stamp(base)))
        located[task] = TaskFiles(
            results_path=run_dir / latest,
            results=parsed[latest],
            samples_path=run_dir / sample if sample else None,
        )
    return dict(sorted(located.items(), key=lambda item: PACK_TASKS.index(item[0])))


def effective_samples(results: dict, task: str) -> int | None:
    count = (results.get("n-samples") or {}).get(task, {}).get("effective")
    return int(count) if count is not None else None


def readable_lines(path: Path) -> int | None:
    """How many JSON lines a sample log holds; None if any line does not parse (cut short)."""
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError:
                return None
            count += 1
    return count


def incomplete_tasks(run_dir: Path, tasks: list[str], fingerprint: str | None) -> dict[str, str]:
    """The requested tasks a run folder does not hold in full for ``fingerprint``, each with
    the reason. A ``None`` fingerprint (unknown model identity) is never complete."""
    if fingerprint is None:
        return dict.fromkeys(tasks, "the model's identity is unknown")
    return _incomplete(run_dir, tasks, fingerprint)


def unwritten_tasks(run_dir: Path, tasks: list[str]) -> dict[str, str]:
    """The requested tasks whose results and sample log are not both complete on disk, whatever
    the fingerprint they record: what the launcher checks before promoting lm-eval's files
    (a run of a model with an unknown identity records none, and is still a valid run)."""
    return _incomplete(run_dir, tasks, fingerprint=None)


def _incomplete(run_dir: Path, tasks: list[str], fingerprint: str | None) -> dict[str, str]:
    """Tasks not complete on disk; with a ``fingerprint``, also those recording another."""
    if not Path(run_dir).is_dir():
        return dict.fromkeys(tasks, "no run folder")
    located = locate_tasks(run_dir, strict=False)
    missing = {}
    for task in tasks:
        files = located.get(task)
        if files is None:
            missing[task] = "no results file holds it"
            continue
        recorded = results_fingerprint(files.results, task)
        if fingerprint is not None and recorded != fingerprint:
            missing[task] = (
                "its latest results come from a different model or settings "
                f"(fingerprint {str(recorded)[:12]}, requested {fingerprint[:12]})"
            )
            continue
        expected = effective_samples(files.results, task)
        if files.samples_path is None:
            missing[task] = f"{files.results_path.name} has no sample log beside it"
        elif expected is None or readable_lines(files.samples_path) != expected:
            missing[task] = f"{files.samples_path.name} is cut short"
    return missing
