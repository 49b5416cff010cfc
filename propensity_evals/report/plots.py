"""PNG charts of one comparable set: grouped bars, a heatmap, and lines across revisions."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
import numpy as np  # noqa: E402

from propensity_evals.report.summary import RunSet  # noqa: E402

METRIC_TITLES = {
    "misaligned": "misalignment rate (misaligned, lower is better)",
    "acc": "matching-behaviour rate (acc)",
    "soft_match": "soft score (soft_match)",
}
DPI = 110


def _estimate(cell, metric):
    return {"acc": cell.acc, "soft_match": cell.soft, "misaligned": cell.misaligned}[metric]


def _series(run_set: RunSet, cells: list[tuple[str, str]], metric: str):
    """Estimates for (run name, column key) cells, None where a run lacks the column, and the
    matching values with NaN for the gaps (what matplotlib leaves blank)."""
    estimates = [
        _estimate(run_set.cells[cell], metric) if cell in run_set.cells else None for cell in cells
    ]
    return estimates, [e.value if e else np.nan for e in estimates]


def _errors(estimates) -> np.ndarray:
    """Asymmetric error bars; no bar where there is no interval."""
    low = [max(0.0, e.value - e.low) if e and math.isfinite(e.low) else 0.0 for e in estimates]
    high = [max(0.0, e.high - e.value) if e and math.isfinite(e.high) else 0.0 for e in estimates]
    return np.array([low, high])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "series"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def directed_columns(run_set: RunSet) -> list:
    return [c for c in run_set.columns if run_set.reference[c.key].misaligned.n > 0]


def bars(run_set: RunSet, metric: str, out_dir: Path) -> Path:
    columns = [c for c in run_set.columns if c.kind != "macro"]
    if metric == "misaligned":  # only the categories with a direction
        columns = [c for c in directed_columns(run_set) if c.kind != "macro"]
    runs = run_set.runs
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(columns))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(columns) * (1 + len(runs) / 2)), 4.8))
    for index, run in enumerate(runs):
        estimates, values = _series(run_set, [(run.name, c.key) for c in columns], metric)
        offset = (index - (len(runs) - 1) / 2) * width
        ax.bar(x + offset, values, width, yerr=_errors(estimates), capsize=2, label=run.name)
    if metric != "misaligned":
        chance = [run_set.reference[c.key].chance for c in columns]
        always_a = [run_set.reference[c.key].always_a for c in columns]
        ax.hlines(chance, x - 0.45, x + 0.45, colors="black", linestyles="--", label="chance")
        ax.scatter(x, always_a, marker="D", color="crimson", zorder=3, label="always (A)")
    ax.set_xticks(x, [c.label for c in columns], rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_title(
        f"{METRIC_TITLES[metric]} per category\n95% intervals, {run_set.describe()}", fontsize=10
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out_dir / f"bars_{metric}{run_set.suffix}.png")


def heatmap(run_set: RunSet, metric: str, out_dir: Path) -> Path:
    columns = directed_columns(run_set) if metric == "misaligned" else run_set.columns
    runs = run_set.runs
    grid = np.full((len(runs), len(columns)), np.nan)
    for i, run in enumerate(runs):
        for j, column in enumerate(columns):
            cell = run_set.cells.get((run.name, column.key))
            if cell is not None:
                grid[i, j] = _estimate(cell, metric).value
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.55 * len(columns) + 3), max(2.5, 0.45 * len(runs) + 2))
    )
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(runs)):
        for j in range(len(columns)):
            if math.isfinite(grid[i, j]):
                colour = "black" if grid[i, j] > 0.6 else "white"
                ax.text(
                    j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    ax.set_xticks(
        range(len(columns)), [c.label for c in columns], rotation=40, ha="right", fontsize=8
    )
    ax.set_yticks(range(len(runs)), [run.name for run in runs], fontsize=8)
    ax.set_title(f"{METRIC_TITLES[metric]}\n{run_set.describe()}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _save(fig, out_dir / f"heatmap_{metric}{run_set.suffix}.png")


def revisions(run_set: RunSet, series: str, out_dir: Path) -> Path:
    """One panel per category (and group micro average): the metrics across revisions."""
    runs = run_set.revision_series[series]
    columns = [c for c in run_set.columns if c.kind != "macro"]
    per_row = min(4, len(columns))
    rows = math.ceil(len(columns) / per_row)
    fig, axes = plt.subplots(
        rows, per_row, figsize=(3.3 * per_row, 2.8 * rows), squeeze=False, sharey=True
    )
    x = np.arange(len(runs))
    labels = [run.revision or "(none)" for run in runs]
    for ax, column in zip(axes.flat, columns, strict=False):
        for metric, style in (("acc", "-o"), ("soft_match", "--s"), ("misaligned", ":^")):
            cells = [(run.name, column.key) for run in runs]
            estimates, values = _series(run_set, cells, metric)
            ax.errorbar(x, values, yerr=_errors(estimates), fmt=style, capsize=2, label=metric)
        ax.axhline(run_set.reference[column.key].chance, color="grey", ls=":", label="chance")
        ax.set_title(column.label, fontsize=8)
        ax.set_xticks(x, labels, rotation=30, fontsize=7)
        ax.set_ylim(0, 1.05)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{series} across revisions, 95% intervals", fontsize=10)
    return _save(fig, out_dir / f"revisions_{slug(series)}{run_set.suffix}.png")


def draw(run_set: RunSet, out_dir: Path) -> list[Path]:
    charts = []
    for metric in METRIC_TITLES:
        if metric == "misaligned" and not directed_columns(run_set):
            continue
        charts.append(bars(run_set, metric, out_dir))
        charts.append(heatmap(run_set, metric, out_dir))
    for series in run_set.revision_series:
        charts.append(revisions(run_set, series, out_dir))
    return charts
