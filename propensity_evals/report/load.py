"""Find the eval runs under OUTPUT_DIR and read their per-sample logs; refuse damaged files.

The launcher and lm-eval lay a run out as::

    OUTPUT_DIR/<run_name>/run_info.json
    OUTPUT_DIR/<run_name>/<sanitized model>/results_<timestamp>.json
    OUTPUT_DIR/<run_name>/<sanitized model>/samples_<task>_<timestamp>.jsonl

A folder can hold several results files (a re-run, or tasks added later). For each task the
report uses the latest results file that holds it (chosen with lm-eval's own
``get_latest_filename``) and the sample log written with it (same timestamp). A results or
sample file that does not parse is an error naming the file, never a silently skipped run.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from lm_eval.utils import (
    get_file_datetime,
    get_file_task_name,
    get_latest_filename,
    get_results_filenames,
    get_sample_results_filenames,
)

from propensity_evals.catalog import GROUPS, task_name
from propensity_evals.run_naming import RUN_INFO_FILE, RunSpec

REPORT_DIR_NAME = "report"
RERUN_HINT = "re-run that model (`make sweep` re-runs incomplete runs) or delete the file"

# task -> (group, category), for every task of the pack.
TASKS: dict[str, tuple[str, str]] = {
    task_name(group, category): (group, category)
    for group, (_, categories) in GROUPS.items()
    for category in categories
}
TASK_ORDER = list(TASKS)


class ReportError(RuntimeError):
    """Input the report cannot use as it stands; the message is one line saying what to do."""


@dataclass
class TaskFiles:
    """Where one task's numbers come from in a run folder."""

    results_path: Path
    results: dict
    samples_path: Path | None


@dataclass(frozen=True)
class Question:
    """One scored question, exactly as the sample log has it."""

    doc_id: int
    question: str
    choices: tuple[str, ...]
    target: int
    loglikelihoods: tuple[float, ...]


@dataclass
class TaskLog:
    task: str
    group: str
    category: str
    results_path: Path
    samples_path: Path
    version: str
    sha256: str
    limit: str
    prompt_format: str
    questions: list[Question]
    logged: dict  # what the results JSON says (acc, soft_match, n), for a cross-check


@dataclass
class Run:
    name: str
    path: Path
    model: str
    revision: str
    limit: str
    prompt_format: str
    system_prompt: str
    series: str  # the run name without its revision: runs of one model across checkpoints
    tasks: dict[str, TaskLog] = field(default_factory=dict)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text; {RERUN_HINT}") from None
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path}: truncated or invalid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); {RERUN_HINT}"
        ) from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object; {RERUN_HINT}")
    return data


def _stamp(filename: str) -> str:
    return get_file_datetime(filename).removesuffix(".json")


def locate_tasks(run_dir: Path, strict: bool = True) -> dict[str, TaskFiles]:
    """task -> its latest results file and the sample log written with it.

    ``strict=False`` (the sweep's completeness check) skips unreadable results files instead
    of raising: a damaged run is simply not complete.
    """
    run_dir = Path(run_dir)
    # Paths relative to the run folder, so that the folder's own name cannot look like a
    # results file to lm-eval's substring matching.
    listing = sorted(
        "./" + path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()
    )
    parsed: dict[str, dict] = {}
    holding: dict[str, list[str]] = defaultdict(list)
    for name in get_results_filenames(listing):
        if not name.endswith(".json"):
            continue
        try:
            data = read_json(run_dir / name)
        except ReportError:
            if strict:
                raise
            continue
        parsed[name] = data
        for task in data.get("configs") or {}:
            if task in TASKS:
                holding[task].append(name)
    samples: dict[tuple[str, str, str], str] = {}
    for name in get_sample_results_filenames(listing):
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
    return dict(sorted(located.items(), key=lambda item: TASK_ORDER.index(item[0])))


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


def missing_tasks(run_dir: Path, tasks: list[str]) -> list[str]:
    """The requested tasks a run folder does not yet hold in full (results + sample log)."""
    if not Path(run_dir).is_dir():
        return list(tasks)
    located = locate_tasks(run_dir, strict=False)
    missing = []
    for task in tasks:
        files = located.get(task)
        if files is None or files.samples_path is None:
            missing.append(task)
            continue
        expected = effective_samples(files.results, task)
        if expected is None or readable_lines(files.samples_path) != expected:
            missing.append(task)
    return missing


def read_samples(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ReportError(
                    f"{path}:{lineno}: truncated or invalid JSON ({error.msg}); {RERUN_HINT}"
                ) from None
    return rows


def parse_question(row: dict, where: str) -> Question:
    try:
        doc = row["doc"]
        choices = tuple(doc["choices"])
        target = int(doc["target"])
        lls = tuple(float(response[0]) for response in row["filtered_resps"])
        doc_id = int(doc.get("id", row["doc_id"]))
        question = str(doc.get("question", ""))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ReportError(
            f"{where}: not a sample of this pack ({type(error).__name__}: {error}); {RERUN_HINT}"
        ) from None
    if len(lls) != len(choices) or not 0 <= target < len(choices):
        raise ReportError(
            f"{where}: {len(lls)} scores for {len(choices)} options (target {target}); {RERUN_HINT}"
        )
    return Question(doc_id, question, choices, target, lls)


def limit_text(value) -> str:
    """lm-eval writes LIMIT as a float (3.0) or null; run_info as the text given ("3")."""
    if value in (None, ""):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def model_args(results: dict) -> dict:
    args = (results.get("config") or {}).get("model_args") or {}
    if isinstance(args, str):  # older lm-eval: "pretrained=x,revision=y"
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    return args


def read_task(task: str, files: TaskFiles, notes: list[str], run_name: str) -> TaskLog | None:
    group, category = TASKS[task]
    results = files.results
    if files.samples_path is None:
        notes.append(
            f"{run_name}: {task} has results but no sample log (run without --log_samples?): "
            "left out, since every number is recomputed from the sample logs"
        )
        return None
    rows = read_samples(files.samples_path)
    questions = [
        parse_question(row, f"{files.samples_path}:{lineno}")
        for lineno, row in enumerate(rows, start=1)
    ]
    expected = effective_samples(results, task)
    if expected is not None and expected != len(questions):
        notes.append(
            f"{run_name}: {task} sample log holds {len(questions)} questions where the results "
            f"file says {expected}: incomplete, left out"
        )
        return None
    ids = [question.doc_id for question in questions]
    if len(set(ids)) != len(ids):
        raise ReportError(f"{files.samples_path}: a question appears twice; {RERUN_HINT}")
    config = (results.get("configs") or {}).get(task) or {}
    metadata = config.get("metadata") or {}
    logged = (results.get("results") or {}).get(task) or {}
    return TaskLog(
        task=task,
        group=group,
        category=category,
        results_path=files.results_path,
        samples_path=files.samples_path,
        version=str(metadata.get("version", (results.get("versions") or {}).get(task, ""))),
        sha256=str(metadata.get("sha256", "")),
        limit=limit_text((results.get("config") or {}).get("limit")),
        prompt_format=str(metadata.get("prompt_format", "plain")),
        questions=sorted(questions, key=lambda question: question.doc_id),
        logged={
            "acc": logged.get("acc,none"),
            "soft_match": logged.get("soft_match,none"),
        },
    )


def read_run(run_dir: Path, notes: list[str]) -> Run | None:
    """One run folder, or None (with a note) if it holds no usable task yet."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_INFO_FILE
    info = read_json(info_path) if info_path.is_file() else {}
    located = locate_tasks(run_dir)
    if not located:
        if info:
            notes.append(
                f"{run_dir.name}: no results yet (crashed, or still running): left out; "
                "`make sweep` re-runs it"
            )
        return None
    first = next(iter(located.values())).results
    args = model_args(first)
    spec = RunSpec(
        model=str(info.get("model") or args.get("pretrained") or run_dir.name),
        revision=str(info.get("revision") or args.get("revision") or ""),
        limit=str(info.get("limit", limit_text((first.get("config") or {}).get("limit")))),
        prompt_format=str(info.get("prompt_format") or "plain"),
        system_prompt=str(info.get("system_prompt") or first.get("system_instruction") or ""),
        label=str(info.get("label") or ""),
    )
    series = replace(spec, revision="").run_name
    run = Run(
        name=run_dir.name,
        path=run_dir,
        model=spec.label or spec.model,
        revision=spec.revision,
        limit=spec.limit,
        prompt_format=spec.prompt_format,
        system_prompt=spec.system_prompt,
        series=series if info else re.sub(r"@[^_]*", "", run_dir.name),
    )
    for task, files in located.items():
        log = read_task(task, files, notes, run.name)
        if log is None:
            continue
        if log.limit != run.limit:
            notes.append(
                f"{run.name}: {task} was run with LIMIT={log.limit or 'none'} but the folder is "
                f"for LIMIT={run.limit or 'none'}: left out"
            )
            continue
        if log.prompt_format != run.prompt_format:
            notes.append(
                f"{run.name}: {task} was scored in {log.prompt_format} format, the folder is "
                f"for {run.prompt_format}: left out"
            )
            continue
        run.tasks[task] = log
    if not run.tasks:
        notes.append(f"{run.name}: no complete task: left out")
        return None
    return run


def discover(output_dir: Path) -> tuple[list[Run], list[str]]:
    """Every run folder under ``output_dir`` (its ``report/`` aside), and notes on the ones
    that could not be used."""
    output_dir = Path(output_dir)
    hint = (
        f"no eval runs found under {output_dir}: run `make eval_cpu`, `make eval_hf` or "
        f"`make sweep` first (with the same OUTPUT_DIR)"
    )
    if not output_dir.is_dir():
        raise ReportError(hint)
    runs, notes = [], []
    for child in sorted(output_dir.iterdir()):
        if not child.is_dir() or child.name == REPORT_DIR_NAME:
            continue
        run = read_run(child, notes)
        if run is not None:
            runs.append(run)
    if not runs:
        raise ReportError(hint + (f" ({notes[0]})" if notes else ""))
    return runs, notes
