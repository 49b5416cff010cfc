"""What the task folders' ``utils.py`` hand to lm-eval: the dataset loader, the task class and
the metrics."""

from __future__ import annotations

from pathlib import Path

from propensity_evals.anthropic_data import DataError
from propensity_evals.cyclic_task import CyclicOrdersTask
from propensity_evals.request_cache_key import DocumentKeyedTask
from propensity_evals.task_docs import load_task_dataset, process_results

__all__ = ["CyclicOrdersTask", "DocumentKeyedTask", "make_loader", "process_results"]


def make_loader(default_data_dir: Path):
    """A ``custom_dataset`` function bound to the checkout's ``data/`` folder.

    A data problem ends the run with one line saying what to do: lm-eval would otherwise
    print a long traceback, or for some errors skip the task and carry on.
    """

    def load_dataset(**kwargs):
        try:
            return load_task_dataset(default_data_dir, **kwargs)
        except DataError as error:
            raise SystemExit(f"error: {error}") from None

    return load_dataset
