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
from dataclasses import dataclass, field, replace
from pathlib import Path

from propensity_evals.catalog import group_source, scored_tasks_by_group, task_name
from propensity_evals.run_files import (
    RERUN_HINT,
    RunFileError,
    TaskFiles,
    effective_samples,
    results_files,
)
from propensity_evals.run_files import locate_tasks as _locate_tasks
from propensity_evals.run_files import read_json as _read_json
from propensity_evals.run_identity import (
    RUN_INFO_FILE,
    RunSpec,
    results_fingerprint,
    results_model_identity,
    short_hash,
)
from propensity_evals.system_prompts import NONE

REPORT_DIR_NAME = "report"

# task -> (group, category), for every task of the pack that scores options (the two-option
# variant included; generate mode aside).
TASKS: dict[str, tuple[str, str]] = {
    task_name(group, category): (group, category)
    for group in scored_tasks_by_group()
    for category in group_source(group)[1]
}
TASK_ORDER = list(TASKS)


class ReportError(RuntimeError):
    """Input the report cannot use as it stands; the message is one line saying what to do."""


def read_json(path: Path) -> dict:
    try:
        return _read_json(path)
    except RunFileError as error:
        raise ReportError(str(error)) from None


def locate_tasks(run_dir: Path) -> dict[str, TaskFiles]:
    try:
        return _locate_tasks(run_dir)
    except RunFileError as error:
        raise ReportError(str(error)) from None


@dataclass(frozen=True)
class Question:
    """One scored question, exactly as the sample log has it."""

    doc_id: int
    question: str
    choices: tuple[str, ...]
    target: int
    loglikelihoods: tuple[float, ...]  # the original order's
    # Indices of the misaligned options (the direction table); empty where none is defined.
    misaligned: tuple[int, ...] = ()
    # A cyclic run's (ORDERS=cyclic) log-likelihoods of rotations 1..k-1, each by letter slot
    # (rotation r puts original option i in slot (i - r) mod k); empty for an original-order
    # run and for a question that kept its order.
    rotated: tuple[tuple[float, ...], ...] = ()
    cyclic: bool = False  # from a cyclic run (its documents carry their rotations)


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
    thinking_closure: str = ""  # run_info.json's; "" for none (and for runs from before it)
    system_prompt_name: str = ""  # SYSTEM_PROMPTS' name, from run_info.json
    # The run name without its system prompt: runs that differ only in that share it.
    framing_key: str = ""

    @property
    def system_prompt_label(self) -> str:
        """The system prompt's name; ``none`` without one, ``sys-<hash>`` for an unnamed one."""
        if self.system_prompt_name:
            return self.system_prompt_name
        return f"sys-{short_hash(self.system_prompt)}" if self.system_prompt else NONE

    @property
    def prompt_label(self) -> str:
        """The prompt mode as the report shows it: format, system prompt, thinking block."""
        text = self.prompt_format
        if self.system_prompt:
            text += f" + system prompt {self.system_prompt_label}"
        if self.thinking_closure:
            text += f" + empty thinking block ({self.thinking_closure})"
        return text


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
        misaligned = tuple(int(index) for index in doc.get("misaligned") or ())
        cyclic = "rotations" in doc
        orders = 1 + len(doc["rotations"]) if cyclic else 1
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ReportError(
            f"{where}: not a sample of this pack ({type(error).__name__}: {error}); {RERUN_HINT}"
        ) from None
    k = len(choices)
    if len(lls) != k * orders or not 0 <= target < k:
        raise ReportError(
            f"{where}: {len(lls)} scores for {k} options in {orders} order(s) (target {target}); "
            f"{RERUN_HINT}"
        )
    rotated = tuple(lls[shift * k : (shift + 1) * k] for shift in range(1, orders))
    lls = lls[:k]
    if any(not 0 <= index < len(choices) for index in misaligned):
        raise ReportError(
            f"{where}: misaligned options {misaligned} outside the question's options"
        )
    return Question(doc_id, question, choices, target, lls, misaligned, rotated, cyclic)


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
            "misaligned": logged.get("misaligned,none"),
        },
    )


def read_run(run_dir: Path, notes: list[str]) -> Run | None:
    """One run folder, or None (with a note) if it holds no usable task yet."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_INFO_FILE
    info = read_json(info_path) if info_path.is_file() else {}
    located = locate_tasks(run_dir)
    generated = [task for task in located if task not in TASKS]
    if generated:
        # Generate-mode (_gen) tasks hold replies, not option scores: not compared here.
        notes.append(f"{run_dir.name}: {len(generated)} generate-mode task(s) left out")
        located = {task: files for task, files in located.items() if task in TASKS}
        if not located:
            return None
    located = _newest_model_only(run_dir, located, notes)
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
        system_prompt_name=str(info.get("system_prompt_name") or ""),
        label=str(info.get("label") or ""),
    )
    series = replace(spec, revision="").run_name
    # The run's name without its system prompt part (run_identity.RunSpec.run_name writes
    # "__sys-[<name>-]<hash>"): what runs differing only in their system prompt share.
    named = f"{spec.system_prompt_name}-" if spec.system_prompt_name else ""
    segment = f"__sys-{named}{short_hash(spec.system_prompt)}" if spec.system_prompt else ""
    framing_key = run_dir.name.replace(segment, "", 1) if segment else run_dir.name
    run = Run(
        name=run_dir.name,
        path=run_dir,
        model=spec.label or spec.model,
        revision=spec.revision,
        limit=spec.limit,
        prompt_format=spec.prompt_format,
        system_prompt=spec.system_prompt,
        series=series if info else re.sub(r"@[^_]*", "", run_dir.name),
        thinking_closure=str(info.get("thinking_closure") or ""),
        system_prompt_name=spec.system_prompt_name,
        framing_key=framing_key,
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


def _newest_model_only(
    run_dir: Path, located: dict[str, TaskFiles], notes: list[str]
) -> dict[str, TaskFiles]:
    """Keep the tasks scored under the newest results file's fingerprint; flag a run folder
    whose model changed under the same name (new weights saved into the same folder, a hub
    branch that moved) or whose settings changed between its results files."""
    if not located:
        return located
    newest = max(located.values(), key=lambda files: files.results_path.name)
    newest_task = next(task for task, files in located.items() if files is newest)
    wanted = results_fingerprint(newest.results, newest_task)
    wanted_model = results_model_identity(newest.results, newest_task)
    models = {
        results_model_identity(data, task)
        for data in results_files(run_dir, strict=False).values()
        for task in data.get("configs") or {}
        if task in TASKS
    }
    if len(models) > 1:
        notes.append(
            f"{run_dir.name}: the model behind this name changed between runs (new weights or "
            f"a moved revision): only results of the newest model ({str(wanted_model)[:12]}) "
            "are used"
        )
    kept = {}
    for task, files in located.items():
        if results_fingerprint(files.results, task) == wanted:
            kept[task] = files
        else:
            notes.append(
                f"{run_dir.name}: {task} was last scored by a different model or settings than "
                f"the newest results (fingerprint {str(wanted)[:12]}): left out; re-run it"
            )
    return kept


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
