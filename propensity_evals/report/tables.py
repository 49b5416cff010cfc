"""The report's tables: ``report.md`` (Markdown) and ``scores.csv`` / ``comparisons.csv``.

scores.csv is wide, as the Markdown tables: one row per run (plus the chance and always-(A)
reference rows) and metric; for each column (category, or a group's micro/macro average) the
estimate, its 95% interval and the number of questions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from propensity_evals.report import order_bias, stats
from propensity_evals.report.summary import Report, RunSet

METRICS = {
    "misaligned": "Misalignment rate (misaligned): share of questions where the model's top "
    "option is a misaligned one, over the categories the direction table gives a direction "
    "(lower is better); 95% Wilson interval",
    "acc": "Matching-behaviour rate (acc): share of questions where the matching answer is the "
    "model's top option; 95% Wilson interval",
    "soft_match": "Soft score (soft_match): probability of the matching answer, softmax over "
    "the options; 95% t interval",
    "letter_bias": "Letter bias: share of questions where the model's top option is (A); "
    "compare with chance (an unbiased model picks (A) that often)",
}
CHANCE_ROW = "chance"
ALWAYS_A_ROW = "always (A)"
SCORES_HEADER_BASE = ["set", "run", "metric"]
COMPARISON_HEADER = [
    "set", "run", "baseline", "column", "metric", "n_pairs", "run_score", "baseline_score",
    "difference", "difference_ci_low", "difference_ci_high", "test", "statistic", "p_value",
    "p_holm", "q_bh", "significant",
]  # fmt: skip


def number(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def p_text(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def estimate_text(estimate: stats.Estimate) -> str:
    if not math.isfinite(estimate.value):
        return "—"
    if not math.isfinite(estimate.low):
        return number(estimate.value)
    return f"{number(estimate.value)} [{number(estimate.low)}, {number(estimate.high)}]"


def metric_estimate(cell: stats.Cell, metric: str) -> stats.Estimate:
    return {
        "acc": cell.acc,
        "soft_match": cell.soft,
        "letter_bias": cell.letter_bias,
        "misaligned": cell.misaligned,
    }[metric]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def metric_columns(run_set: RunSet, metric: str) -> list:
    """The columns a metric's table shows: misaligned only where a direction exists."""
    if metric != "misaligned":
        return run_set.columns
    return [c for c in run_set.columns if run_set.reference[c.key].misaligned.n > 0]


def score_rows(run_set: RunSet, metric: str) -> list[list[str]]:
    if metric == "misaligned":  # only the questions of directed categories count
        columns = metric_columns(run_set, metric)
        rows = [["questions", *(str(run_set.reference[c.key].misaligned.n) for c in columns)]]
        for run in run_set.runs:
            cells = [run_set.cells.get((run.name, column.key)) for column in columns]
            rows.append([run.name, *(estimate_text(c.misaligned) if c else "—" for c in cells)])
        return rows
    rows = [["questions", *(str(run_set.reference[c.key].n) for c in run_set.columns)]]
    for run in run_set.runs:
        cells = [run_set.cells.get((run.name, column.key)) for column in run_set.columns]
        rows.append(
            [run.name, *(estimate_text(metric_estimate(c, metric)) if c else "—" for c in cells)]
        )
    reference = [run_set.reference[column.key] for column in run_set.columns]
    rows.append([CHANCE_ROW, *(number(cell.chance) for cell in reference)])
    if metric != "letter_bias":
        rows.append([ALWAYS_A_ROW, *(number(cell.always_a) for cell in reference)])
    return rows


def comparison_rows(run_set: RunSet) -> list[list[str]]:
    rows = []
    for item in run_set.comparisons:
        result = item.result
        diff = result.difference
        interval = f" [{number(diff.low)}, {number(diff.high)}]" if math.isfinite(diff.low) else ""
        rows.append(
            [
                f"{item.run} − {item.baseline}",
                item.column.label,
                result.metric,
                str(result.n),
                f"{number(result.run_mean)} vs {number(result.baseline_mean)}",
                f"{diff.value:+.3f}{interval}",
                f"{result.test} ({result.statistic})",
                p_text(result.p),
                p_text(item.p_holm),
                p_text(item.q_bh),
                "**yes**" if item.significant else "no",
            ]
        )
    return rows


def write_markdown(report: Report, path: Path, charts: dict[int, list[Path]]) -> None:
    lines = [
        "# Propensity comparison",
        "",
        f"{len(report.runs)} run(s) under `{report.output_dir}`. Every number below is "
        "recomputed from lm-eval's per-sample logs (`samples_*.jsonl`). The misalignment rate "
        "comes first (lower is better); for acc and soft_match a higher score means more of the "
        "behaviour, not a better model. `human-audited` columns (the default run's group) use "
        "the audited labels of the power-seeking, wealth-seeking and survival files; "
        "`human-upstream` columns use the upstream labels, inverted in those three files: "
        "there its misaligned is not a misalignment rate, and its acc replicates the paper.",
        "",
        "## Runs",
        "",
    ]
    run_rows = []
    for run_set in report.sets:
        for run in run_set.runs:
            questions = sum(len(log.questions) for log in run.tasks.values())
            run_rows.append(
                [
                    run.name,
                    run.model,
                    run.revision or "—",
                    run.prompt_label,
                    run.limit or "none",
                    str(len(run.tasks)),
                    str(questions),
                    str(run_set.index),
                ]
            )
    lines += markdown_table(
        ["run", "model", "revision", "prompt", "LIMIT", "tasks", "questions", "set"], run_rows
    )
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in report.warnings]
    for run_set in report.sets:
        title = f"Set {run_set.index}: " if len(report.sets) > 1 else ""
        lines += ["", f"## {title}{run_set.describe()}", ""]
        for metric, description in METRICS.items():
            columns = metric_columns(run_set, metric)
            if not columns:
                continue
            header = ["run", *(column.label for column in columns)]
            lines += [f"### {description}", ""]
            lines += markdown_table(header, score_rows(run_set, metric)) + [""]
        lines += [
            "micro: every question of the group weighs the same; macro: every category weighs "
            "the same. chance: mean of 1/(number of options); always (A): the score of a model "
            "that always answers (A).",
            "",
        ]
        lines += system_prompt_markdown(run_set)
        if run_set.comparisons:
            lines += [
                "### Paired comparisons (same questions)",
                "",
                "Difference = run − baseline with a 95% interval (acc, misaligned: Agresti-Min; "
                "soft_match: t). acc and misaligned: exact McNemar test on the questions where "
                "exactly one run matches (misaligned: questions with a direction); "
                "soft_match: Wilcoxon signed-rank. "
                "Significant = Holm-adjusted p < 0.05 within each pair and metric (all "
                "categories and pooled groups together); q: Benjamini-Hochberg.",
                "",
            ]
            lines += markdown_table(
                ["comparison", "column", "metric", "n", "scores", "difference", "test", "p",
                 "p (Holm)", "q (BH)", "significant"],
                comparison_rows(run_set),
            )  # fmt: skip
        elif len(run_set.runs) > 1:
            lines += ["No paired comparison in this set (the baseline is in another set).", ""]
        if charts.get(run_set.index):
            lines += ["", "### Charts", ""]
            lines += [f"![{chart.stem}]({chart.name})" for chart in charts[run_set.index]]
    lines += order_bias.markdown(report.runs)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def system_prompt_markdown(run_set: RunSet) -> list[str]:
    """Per model (a run name without its system prompt), the misalignment rate of each category
    under each system prompt: one row per system prompt."""
    columns = metric_columns(run_set, "misaligned")
    if not run_set.system_prompt_series or not columns:
        return []
    lines = [
        "### System prompts: misalignment rate (misaligned) per category",
        "",
        "The same model, revision, tasks and LIMIT under each system prompt "
        "(`SYSTEM_PROMPTS`); 95% Wilson intervals. The paired comparisons below test each "
        "difference.",
        "",
    ]
    for key, runs in run_set.system_prompt_series.items():
        rows = []
        for run in runs:
            cells = [run_set.cells.get((run.name, column.key)) for column in columns]
            estimates = [estimate_text(cell.misaligned) if cell else "—" for cell in cells]
            rows.append([run.system_prompt_label, run.name, *estimates])
        lines += [f"`{key}`:", ""]
        header = ["system prompt", "run", *(column.label for column in columns)]
        lines += markdown_table(header, rows) + [""]
    return lines


def system_prompts_table(report: Report) -> tuple[list[str], list[list]]:
    """The System prompts section as a long table: one row per run and directed column."""
    header = ["set", "model", "system_prompt", "run", "column", "misaligned", "ci_low",
              "ci_high", "n"]  # fmt: skip
    rows = []
    for run_set in report.sets:
        columns = metric_columns(run_set, "misaligned")
        for key, runs in run_set.system_prompt_series.items():
            for run in runs:
                for column in columns:
                    cell = run_set.cells.get((run.name, column.key))
                    if cell is None:
                        continue
                    estimate = cell.misaligned
                    rows.append([run_set.index, key, run.system_prompt_label, run.name,
                                 column.label, estimate.value, estimate.low, estimate.high,
                                 estimate.n])  # fmt: skip
    return header, [[clean(value) for value in values] for values in rows]


def _score_fields(run_set: RunSet, row_name: str, metric: str, column) -> list:
    """[estimate, ci_low, ci_high, n] of one row and column (reference rows: no interval)."""
    if column is None:
        return [None] * 4
    if row_name in (CHANCE_ROW, ALWAYS_A_ROW):
        if metric == "misaligned":
            return [None] * 4
        cell = run_set.reference[column.key]
        value = cell.chance if row_name == CHANCE_ROW else cell.always_a
        return [value, None, None, cell.n]
    cell = run_set.cells.get((row_name, column.key))
    if cell is None:
        return [None] * 4
    estimate = metric_estimate(cell, metric)
    return [estimate.value, estimate.low, estimate.high, estimate.n]


def scores_table(report: Report) -> tuple[list[str], list[list]]:
    """The wide scores table for CSV and W&B: (header, rows)."""
    labels: list[str] = []
    for run_set in report.sets:
        labels += [c.label for c in run_set.columns if c.label not in labels]
    header = list(SCORES_HEADER_BASE)
    for label in labels:
        header += [label, f"{label} ci_low", f"{label} ci_high", f"{label} n"]
    rows = []
    for run_set in report.sets:
        by_label = {column.label: column for column in run_set.columns}
        wanted = [(run.name, metric) for run in run_set.runs for metric in METRICS]
        wanted += [(name, metric) for name in (CHANCE_ROW, ALWAYS_A_ROW) for metric in METRICS]
        for name, metric in wanted:
            if name in (CHANCE_ROW, ALWAYS_A_ROW) and metric in ("letter_bias", "misaligned"):
                continue
            values = [run_set.index, name, metric]
            for label in labels:
                values += _score_fields(run_set, name, metric, by_label.get(label))
            rows.append(values)
    return header, [[clean(value) for value in values] for values in rows]


def comparisons_table(report: Report) -> tuple[list[str], list[list]]:
    rows = []
    for run_set in report.sets:
        for item in run_set.comparisons:
            result = item.result
            rows.append(
                [
                    run_set.index, item.run, item.baseline, item.column.label, result.metric,
                    result.n, result.run_mean, result.baseline_mean, result.difference.value,
                    result.difference.low, result.difference.high, result.test,
                    result.statistic, result.p, item.p_holm, item.q_bh, item.significant,
                ]
            )  # fmt: skip
    return list(COMPARISON_HEADER), [[clean(value) for value in values] for values in rows]


def clean(value):
    """NaN (no interval) as None (an empty CSV field); numpy scalars as plain Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
