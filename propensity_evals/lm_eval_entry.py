"""lm-eval's command line with this project's model classes registered (``hf-prefix``, and
``openai-compatible-chat`` for ``make eval_api``, and
``hf-mlm`` for masked LMs from :mod:`propensity_evals.masked_lm`).

lm-eval 0.4.13 only finds its own model classes by name, so ``--model hf-prefix`` needs a
process that has imported :mod:`propensity_evals.prefix_sharing_lm` before lm-eval parses
its arguments. This module is that process; every argument goes to lm-eval unchanged, in
either of its forms::

    python -m propensity_evals.lm_eval_entry run --model hf-prefix --model_args ... --tasks ...
    python -m propensity_evals.lm_eval_entry --model hf-prefix --model_args ... --tasks ...
    accelerate launch -m propensity_evals.lm_eval_entry --model hf-prefix ...   # data parallel

When ``--tasks`` names this pack's tasks alone, lm-eval indexes ``--include_path`` without its
own built-in tasks, which it has no use for (:func:`index_the_include_path_only`).
"""

from __future__ import annotations

import functools
import sys

import propensity_evals.chat_api_lm  # noqa: F401  (registers openai-compatible-chat)
import propensity_evals.masked_lm  # noqa: F401  (registers hf-mlm)
import propensity_evals.prefix_sharing_lm  # noqa: F401  (registers hf-prefix)


def tolerate_missing_sample_metrics() -> None:
    """lm-eval's W&B sample tables read every metric of a task's ``metric_list`` from every
    sample, but tasks whose category has no direction report no ``misaligned``: fill the gap
    with None (an empty cell) instead of losing every sample table to a KeyError."""
    from lm_eval.loggers import wandb_logger

    original = wandb_logger.WandbLogger._generate_dataset

    def generate_dataset(self, data, config):
        names = [item.get("metric") for item in config.get("metric_list") or []]
        return original(self, [dict.fromkeys(names) | row for row in data], config)

    wandb_logger.WandbLogger._generate_dataset = generate_dataset


def only_pack_tasks(argv: list[str]) -> bool:
    """Whether ``--tasks`` names this pack's tasks and groups alone (the launcher never names
    another: catalog.resolve_tasks refuses them)."""
    import argparse

    from propensity_evals.catalog import UnknownTaskError, resolve_tasks

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--tasks", "-t")
    known, _ = parser.parse_known_args(argv)
    if not known.tasks:
        return False
    try:
        resolve_tasks(known.tasks)
    except UnknownTaskError:
        return False
    return True


def index_the_include_path_only() -> None:
    """lm-eval's task manager indexes its ~14,700 built-in task configs on every start (about
    7 s on 2 CPU cores) as well as ``--include_path``. A run of this pack's tasks needs none of
    them, so its task managers index ``--include_path`` alone (where one is given)."""
    import inspect

    from lm_eval.tasks import manager

    original = manager.TaskManager.__init__
    expected = ["self", "verbosity", "include_path", "include_defaults", "metadata"]
    if list(inspect.signature(original).parameters) != expected:
        return  # another lm-eval than the pinned one: its own index, as it is

    @functools.wraps(original)
    def init(self, verbosity=None, include_path=None, include_defaults=None, metadata=None):
        if include_defaults is None:
            include_defaults = include_path is None
        original(self, verbosity, include_path, include_defaults, metadata)

    manager.TaskManager.__init__ = init


def main() -> None:
    # Imported here so that importing this module (e.g. to check it) does not set up logging.
    from lm_eval.__main__ import cli_evaluate

    tolerate_missing_sample_metrics()
    if only_pack_tasks(sys.argv[1:]):
        index_the_include_path_only()
    cli_evaluate()  # reads sys.argv, as `lm_eval` / `lm-eval` do


if __name__ == "__main__":
    main()
