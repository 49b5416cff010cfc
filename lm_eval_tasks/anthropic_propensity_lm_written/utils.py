"""Thin glue between this group's YAMLs and the propensity_evals package."""

from pathlib import Path

from propensity_evals.lm_eval_glue import make_loader, process_results  # noqa: F401

# data/ of this checkout, whatever the current directory; $PROPENSITY_DATA_DIR overrides it.
load_dataset = make_loader(Path(__file__).resolve().parents[2] / "data")
