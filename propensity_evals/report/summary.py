"""Loaded runs -> the report's content: comparable sets, score cells, paired comparisons.

Runs are only put side by side when their numbers mean the same thing: same LIMIT (the same
sample of questions), same task versions and same data checksums. Runs that differ in any of
these go into separate sets, each with its own tables and charts, and the report says why.
A difference in prompt format or system prompt is a legitimate experiment, so such runs stay
in one set: a prompt format change with a warning that their differences include it, runs that
differ only in their system prompt (``SYSTEM_PROMPTS``) side by side in a section of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from propensity_evals.catalog import SHORT_NAMES
from propensity_evals.report import stats
from propensity_evals.report.load import TASK_ORDER, TASKS, ReportError, Run

# Column order: the audited group (the default run's, whose misaligned is the number to report)
# before the upstream one, whose labels are inverted in three files (kept for the paper's acc).
GROUP_SHORT = SHORT_NAMES
METRICS = ("acc", "soft_match", "misaligned")
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Column:
    key: str  # a task name, or "<group>:micro" / "<group>:macro"
    label: str
    group: str
    kind: str  # "task", "micro" or "macro"
    tasks: tuple[str, ...]


@dataclass
class Comparison:
    run: str
    baseline: str
    column: Column
    result: stats.Paired
    p_holm: float = float("nan")
    q_bh: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_holm < stats.ALPHA


@dataclass
class RunSet:
    index: int
    runs: list[Run]
    columns: list[Column]
    cells: dict[tuple[str, str], stats.Cell]  # (run name, column key) -> cell
    reference: dict[str, stats.Cell]  # column key -> chance / always-(A) of its questions
    comparisons: list[Comparison] = field(default_factory=list)
    # series name -> its runs in revision order (only series with 2+ revisions)
    revision_series: dict[str, list[Run]] = field(default_factory=dict)
    # A run name without its system prompt -> its runs under 2+ system prompts (SYSTEM_PROMPTS).
    system_prompt_series: dict[str, list[Run]] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return "" if self.index == 1 else f"_set{self.index}"

    def describe(self) -> str:
        limit = self.runs[0].limit
        return f"LIMIT={limit} questions per task" if limit else "full tasks (no LIMIT)"


@dataclass
class Report:
    output_dir: Path
    runs: list[Run]
    sets: list[RunSet]
    warnings: list[str]
    baseline: str | None


def task_label(task: str) -> str:
    group, category = TASKS[task]
    return f"{GROUP_SHORT[group]}/{category}"


def incompatibilities(a: Run, b: Run) -> list[str]:
    """Why a and b cannot share a table (empty if they can)."""
    reasons = []
    if a.limit != b.limit:
        reasons.append(f"LIMIT {a.limit or 'none'} vs {b.limit or 'none'}")
    for task in sorted(set(a.tasks) & set(b.tasks), key=TASK_ORDER.index):
        x, y = a.tasks[task], b.tasks[task]
        if x.version != y.version:
            reasons.append(f"{task} version {x.version} vs {y.version}")
        if x.sha256 != y.sha256:
            reasons.append(f"{task} data sha256 {x.sha256[:12]} vs {y.sha256[:12]}")
    return reasons


def partition(runs: list[Run], warnings: list[str]) -> list[list[Run]]:
    groups: list[list[Run]] = []
    for run in runs:
        for group in groups:
            if not any(incompatibilities(member, run) for member in group):
                group.append(run)
                break
        else:
            if groups:
                reasons = incompatibilities(groups[0][0], run)
                warnings.append(
                    f"{run.name} is not comparable with {groups[0][0].name} "
                    f"({'; '.join(reasons)}): reported in set {len(groups) + 1}, never mixed"
                )
            groups.append([run])
    return groups


def columns_for(tasks: set[str]) -> list[Column]:
    columns = []
    for group in GROUP_SHORT:
        members = tuple(task for task in TASK_ORDER if task in tasks and TASKS[task][0] == group)
        if not members:
            continue
        columns += [Column(task, task_label(task), group, "task", (task,)) for task in members]
        short = GROUP_SHORT[group]
        columns.append(Column(f"{group}:micro", f"{short} (micro)", group, "micro", members))
        columns.append(Column(f"{group}:macro", f"{short} (macro)", group, "macro", members))
    return columns


def column_cell(column: Column, scores: dict[str, stats.Scores]) -> stats.Cell | None:
    parts = [scores[task] for task in column.tasks if task in scores]
    if not parts:
        return None
    if column.kind == "task":
        return stats.cell(parts[0])
    if column.kind == "micro":
        return stats.cell(stats.pool(parts))
    return stats.macro(parts)


def cross_check(run: Run, scores: dict[str, stats.Scores], warnings: list[str]) -> None:
    """Warn where lm-eval's own aggregate disagrees with the recomputation."""
    for task, log in run.tasks.items():
        task_scores = scores[task]
        recomputed = (
            ("acc", task_scores.acc),
            ("soft_match", task_scores.soft),
            ("misaligned", stats.directed(task_scores.misaligned)),
        )
        for metric, values in recomputed:
            logged = log.logged.get(metric)
            if logged is None or not len(values):
                continue
            if abs(float(logged) - float(values.mean())) > TOLERANCE:
                warnings.append(
                    f"{run.name}: {task} {metric} is {logged:.6f} in {log.results_path.name} "
                    f"but {values.mean():.6f} from the sample log (the report uses the log)"
                )


def order_runs(runs: list[Run], baseline: str | None) -> list[Run]:
    ordered = sorted(runs, key=lambda run: (run.series, stats.natural_key(run.revision), run.name))
    return sorted(ordered, key=lambda run: run.name != baseline)


def compare(run_set: RunSet, scores: dict[str, dict[str, stats.Scores]], baseline: str | None):
    names = [run.name for run in run_set.runs]
    if baseline:
        pairs = (
            [(name, baseline) for name in names if name != baseline] if baseline in names else []
        )
    else:
        # Later minus earlier: across revisions, the change from one checkpoint to the next.
        pairs = [(later, earlier) for earlier, later in combinations(names, 2)]
    for run_name, base_name in pairs:
        family: list[Comparison] = []
        for column in run_set.columns:
            if column.kind == "macro":
                continue  # a mean of means has no paired test; the categories carry it
            x = [scores[run_name][t] for t in column.tasks if t in scores[run_name]]
            y = [scores[base_name][t] for t in column.tasks if t in scores[base_name]]
            if not x or not y:
                continue
            for result in stats.paired(stats.pool(x), stats.pool(y)):
                family.append(Comparison(run_name, base_name, column, result))
        # One correction family per pair and metric: every category plus the pooled groups.
        for metric in METRICS:
            members = [item for item in family if item.result.metric == metric]
            p_values = [item.result.p for item in members]
            for item, p_holm, q_bh in zip(
                members, stats.holm(p_values), stats.benjamini_hochberg(p_values), strict=True
            ):
                item.p_holm, item.q_bh = p_holm, q_bh
        run_set.comparisons += family


def same_questions(run_set: RunSet, warnings: list[str]) -> None:
    for task in sorted({task for run in run_set.runs for task in run.tasks}, key=TASK_ORDER.index):
        seen: dict[tuple, str] = {}
        for run in run_set.runs:
            if task in run.tasks:
                ids = tuple((q.doc_id, q.question) for q in run.tasks[task].questions)
                seen.setdefault(ids, run.name)
        if len(seen) > 1:
            warnings.append(
                f"{task}: runs {', '.join(seen.values())} scored different questions; paired "
                "comparisons use only the questions they share"
            )


def coverage(run_set: RunSet, warnings: list[str]) -> None:
    everything = {column.key for column in run_set.columns if column.kind == "task"}
    for run in run_set.runs:
        missing = sorted(everything - set(run.tasks), key=TASK_ORDER.index)
        if missing:
            warnings.append(
                f"{run.name} lacks {len(missing)} task(s) the other runs of set {run_set.index} "
                f"have ({', '.join(task_label(task) for task in missing)}): its group averages "
                "cover fewer categories"
            )
    # A system prompt change is an experiment of its own (the System prompts section); a
    # change of format or thinking block is worth a warning.
    formats = {(run.prompt_format, run.thinking_closure) for run in run_set.runs}
    if len(formats) > 1:
        described = ", ".join(f"{run.name}: {run.prompt_label}" for run in run_set.runs)
        warnings.append(
            f"set {run_set.index} mixes prompt formats ({described}): differences between "
            "these runs include the prompt change"
        )


def system_prompt_series(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in their system prompt, by the run name without it (2+ prompts)."""
    series: dict[str, list[Run]] = {}
    for run in runs:
        series.setdefault(run.framing_key, []).append(run)
    return {
        key: group for key, group in series.items() if len({run.system_prompt for run in group}) > 1
    }


def build(runs: list[Run], output_dir: Path, baseline: str | None, notes: list[str]) -> Report:
    names = [run.name for run in runs]
    if baseline and baseline not in names:
        raise ReportError(
            f"BASELINE={baseline} is not a run under {output_dir}; runs: {', '.join(names)}"
        )
    warnings = list(notes)
    scores = {
        run.name: {task: stats.score(task, log.questions) for task, log in run.tasks.items()}
        for run in runs
    }
    for run in runs:
        cross_check(run, scores[run.name], warnings)
    sets = []
    for index, members in enumerate(partition(order_runs(runs, baseline), warnings), start=1):
        columns = columns_for({task for run in members for task in run.tasks})
        cells = {}
        for run in members:
            for column in columns:
                value = column_cell(column, scores[run.name])
                if value is not None:
                    cells[(run.name, column.key)] = value
        # Chance and always-(A) depend only on the questions: take each task's from the first
        # run that has it (same_questions warns if the runs' questions differ).
        first_scores: dict[str, stats.Scores] = {}
        for run in members:
            for task in run.tasks:
                first_scores.setdefault(task, scores[run.name][task])
        reference = {column.key: column_cell(column, first_scores) for column in columns}
        run_set = RunSet(index, members, columns, cells, reference)
        same_questions(run_set, warnings)
        coverage(run_set, warnings)
        compare(run_set, scores, baseline)
        series: dict[str, list[Run]] = {}
        for run in members:
            series.setdefault(run.series, []).append(run)
        run_set.system_prompt_series = system_prompt_series(members)
        run_set.revision_series = {
            name: sorted(group, key=lambda run: stats.natural_key(run.revision))
            for name, group in series.items()
            if len({run.revision for run in group}) > 1
        }
        sets.append(run_set)
    if baseline and len(sets) > 1:
        outside = [s.index for s in sets if baseline not in {run.name for run in s.runs}]
        warnings.append(
            f"BASELINE={baseline} is in a different set from set(s) "
            f"{', '.join(map(str, outside))}: those runs are not compared with it"
        )
    return Report(Path(output_dir), runs, sets, warnings, baseline)
