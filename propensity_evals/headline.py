"""What a run's numbers mean, said where the user reads them: the launcher's summary after
lm-eval's own table, and its note before a run that scores with the inverted upstream labels.

lm-eval prints its metrics in alphabetical order, so ``acc`` (the paper's "% matching
behaviour", where higher is not better) comes before ``misaligned``. The summary puts the
misalignment rate, the number to report, first, and names the labels each row scores with.
"""

from __future__ import annotations

import json
from pathlib import Path

from propensity_evals.catalog import (
    GEN_GROUPS,
    GEN_SUFFIX,
    HUMAN_GROUP,
    INVERTED_UPSTREAM,
    category_slug,
    gen_tasks_by_group,
    tasks_by_group,
    uses_audited_labels,
)

# Misalignment first (lower is better), then the paper's metrics; a column shows only where
# some row reports it (debiased: ORDERS=cyclic; parse_failed: MODE=generate).
COLUMNS = (
    "misaligned",
    "misaligned_debiased",
    "misaligned_soft",
    "acc",
    "acc_debiased",
    "soft_match",
    "parse_failed",
)


def upstream_inverted_tasks(tasks: list[str]) -> list[str]:
    """The leaf tasks (either mode) that score an inverted file with its upstream labels."""
    upstream = {HUMAN_GROUP, *(gen for gen, twin in GEN_GROUPS.items() if twin == HUMAN_GROUP)}
    suffixes = tuple(f"_{category_slug(name)}" for name in INVERTED_UPSTREAM)
    names = (tasks_by_group() | gen_tasks_by_group()).items()
    inverted = {
        task
        for group, members in names
        if group in upstream
        for task in members
        if task.endswith(suffixes)
    }
    return [task for task in tasks if task in inverted]


def upstream_label_note(tasks: list[str]) -> str:
    """One line for a run that scores inverted upstream labels ("" for any other run)."""
    inverted = upstream_inverted_tasks(tasks)
    if not inverted:
        return ""
    return (
        f"note: {len(inverted)} task(s) ({inverted[0]}, ...) score with the upstream labels, "
        "inverted in 2,586 of 2,936 power-seeking, wealth-seeking and survival-instinct "
        "questions: their misaligned is not a misalignment rate (use the _audited tasks, the "
        "default); their acc replicates the paper"
    )


def labels_of(name: str) -> str:
    """Which labels a task or group row scores with."""
    if upstream_inverted_tasks([name]) or name in (HUMAN_GROUP, HUMAN_GROUP + GEN_SUFFIX):
        return "upstream (3 files inverted)"
    return "audited" if uses_audited_labels(name) else "upstream"


def summary_rows(results: dict) -> list[list[str]]:
    """Rows of the summary: the groups of a results file, or its tasks when it has none."""
    rows_of = results.get("groups") or results["results"]
    present = [
        metric for metric in COLUMNS if any(f"{metric},none" in row for row in rows_of.values())
    ]
    rows = [["row", "labels", *present, "questions"]]
    for name, row in rows_of.items():
        cells = [name, labels_of(name)]
        for metric in present:
            value = row.get(f"{metric},none")
            stderr = row.get(f"{metric}_stderr,none")
            if value is None:
                cells.append("—")
            elif isinstance(stderr, float):
                cells.append(f"{value:.4f} ± {stderr:.4f}")
            else:
                cells.append(f"{value:.4f}")
        counts = row.get("sample_count") or {}
        scored = row.get("sample_len", "?")
        directed = counts.get("misaligned,none")
        cells.append(f"{scored} ({directed} directed)" if directed is not None else str(scored))
        rows.append(cells)
    return rows


def summary(results_path: Path) -> str:
    """The launcher's closing table for one lm-eval results file."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    rows = summary_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "The number to report is misaligned (lower is better); acc and soft_match are the "
        "paper's metrics (higher = more of the behaviour, not better):"
    ]
    for index, row in enumerate(rows):
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("| " + " | ".join(padded) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
