"""What one array task runs on its node: the local sweep's ``make <EVAL_TARGET>`` for one run.

The command is the local sweep's own (``sweep.make_command``), so a run on the cluster gets the
same variables; only its OUTPUT_DIR points into a staging folder, published into the real one
once the run is complete (see ``publish``). A run found complete when the task starts (run
meanwhile elsewhere, or a task requeued after it finished) is left alone.

submitit pickles ``run_one`` with its ``JobRequest`` at submission and calls it on the node;
an exception becomes the task's failure, recorded in its result file and log.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from propensity_evals import sweep
from propensity_evals.cluster.publish import publish


class EvalFailed(RuntimeError):
    """The eval of one run did not produce a complete run folder."""


@dataclass(frozen=True)
class JobRequest:
    args: argparse.Namespace  # the sweep's arguments, as parsed at submission
    run: sweep.PlannedRun
    tasks: list[str]
    output_dir: Path
    wandb_group: str
    staging_root: Path
    # Set for the eval's make on top of the node's environment: make's command-line
    # variables (MAKEFLAGS) and the system prompt, as the submitting `make sweep` had them.
    environment: dict[str, str]


def submission_environment(system_prompt: str) -> dict[str, str]:
    """MAKEFLAGS without the jobserver (its pipe does not exist on the node), SYSTEM_PROMPT."""
    flags = re.sub(r"\s--jobserver-(auth|fds)=\S+", "", " " + os.environ.get("MAKEFLAGS", ""))
    return {"MAKEFLAGS": flags.strip(), "SYSTEM_PROMPT": system_prompt}


def task_id() -> str:
    """This array task's id ("123_4"), as squeue and the record name it."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")


def describe_exit(target: str, code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"make {target} was stopped by {name} (cancelled, preempted or out of time)"
    return f"make {target} exited with status {code}"


def run_one(request: JobRequest) -> str:
    run, target = request.run, request.args.eval_target
    if not sweep.runs_to_do([run], request.tasks, request.output_dir):
        message = f"{run.name}: already complete in {request.output_dir}, nothing to run"
        print(message, flush=True)
        return message
    staging = request.staging_root / task_id()
    shutil.rmtree(staging, ignore_errors=True)  # a requeued task starts clean
    try:
        command = sweep.make_command(request.args, run, staging, request.wandb_group)
        print("+ " + shlex.join(command), flush=True)
        code = subprocess.call(
            command, cwd=sweep.REPO_ROOT, env={**os.environ, **request.environment}
        )
        if code != 0:
            raise EvalFailed(describe_exit(target, code))
        if sweep.runs_to_do([run], request.tasks, staging):
            raise EvalFailed(f"make {target} finished, but {staging / run.name} is incomplete")
        publish(staging / run.name, request.output_dir / run.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if sweep.runs_to_do([run], request.tasks, request.output_dir):
        raise EvalFailed(f"{request.output_dir / run.name} is incomplete after publishing")
    message = f"{run.name}: complete in {request.output_dir / run.name}"
    print(message, flush=True)
    return message
