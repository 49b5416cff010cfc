"""``make report``: compare eval runs under OUTPUT_DIR, recomputed from lm-eval's sample logs.

One module per job: ``load`` finds and validates the runs, ``stats`` computes every number,
``summary`` sorts the runs into comparable sets and pairs them, ``tables`` writes Markdown and
CSV, ``plots`` the PNG charts, ``wandb_log`` the optional W&B copy, and ``__main__`` ties them
together.
"""
