"""PNG figures of the corpus, drawn off-screen.

``matplotlib.figure.Figure`` is used directly (no pyplot), so no GUI backend or global figure
state is involved; ``savefig`` renders through Agg.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .explore import SourceStats, length_bin_labels
from .files import atomic_write_bytes


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def docs_per_year(stats: list[SourceStats], path: Path) -> Path:
    """Stacked bars: documents per publication year, one colour per source."""
    years = sorted({year for item in stats for year in item.per_year})
    fig = Figure(figsize=(11, 5.5))
    ax = fig.add_subplot()
    bottom = [0] * len(years)
    cmap = matplotlib.colormaps["tab20"]
    # tab20 comes in dark/light pairs: take the ten dark hues first so neighbours differ.
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    for index, item in enumerate(stats):
        counts = [item.per_year.get(year, 0) for year in years]
        if not any(counts):
            continue
        ax.bar(years, counts, bottom=bottom, label=item.source, color=cmap(order[index % 20]))
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xlabel("year published")
    ax.set_ylabel("documents")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Documents per year, by source")
    if years:
        ax.legend(fontsize="small", ncols=2, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no dated documents", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def length_distribution(stats: list[SourceStats], path: Path) -> Path:
    """Share of each source's documents per word-count bin (bins are roughly logarithmic)."""
    labels = length_bin_labels()
    fig = Figure(figsize=(11, 5.5))
    ax = fig.add_subplot()
    positions = range(len(labels))
    for item in stats:
        if not item.documents:
            continue
        shares = [count / item.documents for count in item.length_hist]
        ax.plot(positions, shares, marker="o", label=item.source)
    ax.set_xticks(list(positions), labels, rotation=30, ha="right")
    ax.set_xlabel("words per document")
    ax.set_ylabel("share of the source's documents")
    ax.set_title("Document length distribution, by source")
    if any(item.documents for item in stats):
        ax.legend(fontsize="small", ncols=2)
    return _save(fig, path)
