"""What one array task runs on its node: the local sweep's ``make <EVAL_TARGET>`` for one run.

The command is the local sweep's own (``sweep.make_command``), so a run on the cluster gets the
same variables; only its OUTPUT_DIR points into a staging folder, published into the real one
once the run is complete (see ``publish``).

A task plans its run again when it starts (with the submission's variables): a hub branch that
moved, new weights in a model folder or new code since submission give the run another
fingerprint, and the task evaluates the run as it is now, saying in one log line what changed.
A run found complete for that fingerprint (run meanwhile elsewhere, or a task requeued after it
finished) is left alone. A finished run is always published, beside whatever the run folder
holds already: results are timestamped and none is ever replaced (results under another
fingerprint stay, and the report says the model changed).

submitit pickles ``run_one`` with its ``JobRequest`` at submission and calls it on the node;
an exception becomes the task's failure, recorded in its result file and log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from propensity_evals import sweep
from propensity_evals.cluster.publish import PublishRefused, publish
from propensity_evals.run_files import unwritten_tasks
from propensity_evals.run_identity import RUN_INFO_FILE


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


@contextmanager
def submission_environ(environment: dict[str, str]) -> Iterator[None]:
    """Plan as the submission did: its MAKEFLAGS (make's command-line variables) and its
    SYSTEM_PROMPT stand in for this process's own while the sweep asks the launcher."""
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def changed_inputs(before: dict, after: dict, prefix: str = "") -> list[str]:
    """What differs between two fingerprints' inputs, as "model.commit 1a2b3c4d -> 5e6f7a8b"."""
    changes = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_inputs(old, new, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} {_short(old)} -> {_short(new)}")
    return changes


def _short(value) -> str:
    text = "none" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)
    return text if len(text) <= 16 else text[:12] + "..."


def replan(request: JobRequest) -> sweep.PlannedRun:
    """The run as it resolves now (a hub branch may have moved, new weights or new code may
    have arrived since submission): that is the run this task evaluates."""
    submitted = request.run
    with submission_environ(request.environment):
        current = sweep.plan_one(request.args, submitted, request.output_dir)
    if current.fingerprint != submitted.fingerprint:
        what = "; ".join(changed_inputs(submitted.inputs, current.inputs)) or "not recorded"
        print(
            f"{current.name}: re-planned: fingerprint {str(submitted.fingerprint)[:12]} at "
            f"submission, {str(current.fingerprint)[:12]} now ({what}); evaluating it as it is "
            "now, beside any results already there",
            flush=True,
        )
    return current


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint the launcher recorded for the run it wrote into ``run_dir``."""
    try:
        return json.loads((run_dir / RUN_INFO_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def run_one(request: JobRequest) -> str:
    target = request.args.eval_target
    run = replan(request)
    final = request.output_dir / run.name
    if not sweep.runs_to_do([run], request.tasks, request.output_dir):
        message = f"{run.name}: already complete in {request.output_dir}, nothing to run"
        print(message, flush=True)
        return message
    staging = request.staging_root / task_id()
    shutil.rmtree(staging, ignore_errors=True)  # a requeued task starts clean
    staged = staging / run.name
    keep_staging = False
    try:
        command = sweep.make_command(request.args, run, staging, request.wandb_group)
        print("+ " + shlex.join(command), flush=True)
        code = subprocess.call(
            command, cwd=sweep.REPO_ROOT, env={**os.environ, **request.environment}
        )
        if code != 0:
            raise EvalFailed(describe_exit(target, code))
        if unwritten_tasks(staged, request.tasks):
            raise EvalFailed(f"make {target} finished, but {staged} is incomplete")
        # Finished results are never thrown away: published whatever their fingerprint, beside
        # what the run folder holds (results files are timestamped; none is replaced).
        try:
            publish(staged, final)
        except PublishRefused as error:
            keep_staging = True
            raise EvalFailed(f"{error}; the finished run stays in {staged}") from None
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
    # What the eval ran: the model may have moved again between the re-plan and its start.
    evaluated = replace(run, fingerprint=recorded_fingerprint(final))
    if evaluated.fingerprint != run.fingerprint:
        print(f"{run.name}: the eval resolved yet another fingerprint, "
              f"{str(evaluated.fingerprint)[:12]}", flush=True)  # fmt: skip
    missing = sweep.missing_tasks(evaluated, request.tasks, request.output_dir)
    if missing:  # e.g. a hub commit that could not be resolved: never taken as complete
        task, reason = next(iter(missing.items()))
        raise EvalFailed(f"{final} is published but not complete ({task}: {reason})")
    message = f"{run.name}: complete in {final}"
    print(message, flush=True)
    return message
