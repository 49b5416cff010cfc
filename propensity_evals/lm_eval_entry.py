"""lm-eval's command line with this project's model classes registered (``hf-prefix``, and
``hf-mlm`` for masked LMs from :mod:`propensity_evals.masked_lm`).

lm-eval 0.4.13 only finds its own model classes by name, so ``--model hf-prefix`` needs a
process that has imported :mod:`propensity_evals.prefix_sharing_lm` before lm-eval parses
its arguments. This module is that process; every argument goes to lm-eval unchanged, in
either of its forms::

    python -m propensity_evals.lm_eval_entry run --model hf-prefix --model_args ... --tasks ...
    python -m propensity_evals.lm_eval_entry --model hf-prefix --model_args ... --tasks ...
    accelerate launch -m propensity_evals.lm_eval_entry --model hf-prefix ...   # data parallel
"""

from __future__ import annotations

import propensity_evals.masked_lm  # noqa: F401  (registers hf-mlm)
import propensity_evals.prefix_sharing_lm  # noqa: F401  (registers hf-prefix)


def main() -> None:
    # Imported here so that importing this module (e.g. to check it) does not set up logging.
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()  # reads sys.argv, as `lm_eval` / `lm-eval` do


if __name__ == "__main__":
    main()
