"""``REPORT_WANDB=1``: the report's tables and charts as one W&B run (job_type ``report``).

It goes to the same project as the eval runs. Without a W&B login it logs offline, as the
eval runs do, and prints the ``wandb sync`` command for later.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from propensity_evals.wandb_mode import WandbModeError, choose_wandb_mode

RUN_NAME = "report"


class WandbError(RuntimeError):
    pass


def log_report(
    tables: dict[str, tuple[list[str], list[list]]],
    images: list[Path],
    project: str,
    entity: str = "",
    mode: str = "",
    group: str = "",
) -> str:
    """Log ``tables`` (name -> (header, rows)) and ``images``; returns the run's folder."""
    try:
        mode = choose_wandb_mode(mode)
    except WandbModeError as error:
        raise WandbError(str(error)) from None
    if mode == "disabled":
        print("W&B: WANDB_MODE=disabled, the report is not logged", file=sys.stderr)
        return ""
    import wandb

    run = wandb.init(
        project=project,
        entity=entity or None,
        name=RUN_NAME,
        job_type="report",
        group=group or None,
        mode=mode,
        dir=os.environ.get("WANDB_DIR") or None,
        settings=wandb.Settings(silent=True),
    )
    try:
        payload = {
            f"report/{name}": wandb.Table(columns=header, data=rows)
            for name, (header, rows) in tables.items()
        }
        payload |= {f"report/{path.stem}": wandb.Image(str(path)) for path in images}
        run.log(payload)
        run_dir = str(Path(run.dir).parent)
    finally:
        run.finish()
    if mode == "offline":
        print(f"W&B: report saved offline; upload it with: wandb sync {run_dir}")
    return run_dir
