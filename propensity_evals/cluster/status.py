"""``make sweep_status``: where each run of the last SLURM submission stands.

Per run: queued or running while squeue still lists its task; afterwards done when its output
folder is complete for the run as planned now with the submission's own arguments and make
variables (the sweep's own ``runs_to_do``), else failed, with the last error line of
its log (SLURM's own "CANCELLED" / "TIME LIMIT" line, the launcher's ``error:``, or the last
exception) and what submitit recorded. No ``sacct``: many clusters have no accounting.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from propensity_evals import sweep
from propensity_evals.catalog import UnknownTaskError
from propensity_evals.cluster import record, slurm_commands
from propensity_evals.cluster.job import recorded_fingerprint, submission_environ

# slurmstepd's verdict on a job ("*** JOB 12 ON node CANCELLED AT ... ***", "DUE TO TIME LIMIT").
SLURM_VERDICT = re.compile(r"\*\*\* (JOB|STEP) .* \*\*\*")
ERROR_WORDS = re.compile(
    r"error|exception|cancelled|killed|time limit|preempt|out of memory|oom", re.IGNORECASE
)
# Lines that say an error happened without saying which: make's trailer, submitit's own logger,
# srun's note on the exit code, traceback frames.
NOISE = re.compile(
    r"^(make(\[\d+\])?: \*\*\* |submitit (ERROR|WARNING|INFO) |srun: error: .*: Exited with |\s)"
)


@dataclass
class RunState:
    name: str
    task_id: str
    state: str  # queued, running, done or failed
    detail: str


def last_error_line(log: Path) -> str:
    if not log.is_file():
        return f"no log at {log}: it never started (cancelled or refused while queued?)"
    lines = [line.rstrip() for line in log.read_text(errors="replace").splitlines()]
    verdicts = [line for line in lines if SLURM_VERDICT.search(line)]
    if verdicts:
        return verdicts[-1].strip()
    errors = [line for line in lines if ERROR_WORDS.search(line) and not NOISE.match(line)]
    if errors:
        return errors[-1].strip()
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1] if tail else f"{log} is empty"


def result_verdict(log: Path) -> str:
    """What submitit's result file says: "success", "error" or "" (none: killed, never ran)."""
    from submitit.core.utils import pickle_load

    path = log.with_name(log.name.replace("_log.out", "_result.pkl"))
    if not path.is_file():
        return ""
    try:
        outcome, _ = pickle_load(path)
    except Exception:  # a result file cut short is no verdict
        return ""
    return str(outcome)


def moved_since(run: sweep.PlannedRun, run_dir: Path) -> str:
    """Why a task that succeeded left its run incomplete, when the reason is that the run now
    resolves to another fingerprint than the one the task evaluated; "" otherwise."""
    evaluated = recorded_fingerprint(run_dir)
    if not evaluated or evaluated == run.fingerprint:
        return ""
    return (
        f"finished for fingerprint {evaluated[:12]}, but the run is now "
        f"{str(run.fingerprint)[:12]} (the model or the code changed since): "
    )


def run_states(submission: record.Submission, queue: dict) -> list[RunState]:
    args = sweep.parse_args(submission.sweep_argv)
    tasks = sweep.requested_tasks(args)
    with submission_environ(submission.environment):
        planned = {run.name: run for run in sweep.plan(args)}
    output_dir = Path(submission.output_dir)
    states = []
    for run in submission.runs:
        log = Path(run.log)
        entry = queue.get(run.task_id)
        if entry is not None:
            if entry.queued:
                state = RunState(run.name, run.task_id, "queued", f"({entry.reason})")
            else:
                detail = f"for {entry.elapsed}, log {log}"
                state = RunState(run.name, run.task_id, "running", detail)
        elif run.name in planned and not sweep.runs_to_do([planned[run.name]], tasks, output_dir):
            state = RunState(run.name, run.task_id, "done", str(output_dir / run.name))
        else:
            verdict = result_verdict(log)
            finished = "finished but left its run incomplete: " if verdict == "success" else ""
            if verdict == "success" and run.name in planned:
                finished = moved_since(planned[run.name], output_dir / run.name) or finished
            detail = f"{finished}{last_error_line(log)} (log {log})"
            state = RunState(run.name, run.task_id, "failed", detail)
        states.append(state)
    return states


def main(argv: list[str] | None = None) -> int:
    try:
        submission = record.last_submission(record.cluster_dir())
        slurm_commands.require_commands()
        states = run_states(submission, slurm_commands.queue())
    except (
        record.RecordError,
        slurm_commands.SlurmError,
        UnknownTaskError,
        sweep.SweepError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"SLURM job {submission.job_id}: {len(states)} run(s) of `make {submission.eval_target}`"
        f", submitted {submission.submitted_at}, into {submission.output_dir}"
    )
    id_width = max(len(state.task_id) for state in states)
    name_width = max(len(state.name) for state in states)
    for state in states:
        print(f"  {state.task_id:<{id_width}}  {state.name:<{name_width}}  {state.state:<7}  "
              f"{state.detail}")  # fmt: skip
    counts = {name: sum(s.state == name for s in states) for name in ("queued", "running")}
    counts |= {name: sum(s.state == name for s in states) for name in ("done", "failed")}
    print(", ".join(f"{number} {name}" for name, number in counts.items() if number))
    if counts["failed"]:
        print("resubmit the failed run(s) with the same `make sweep EXECUTOR=slurm ...` command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
