"""``make sweep EXECUTOR=slurm``: submit the sweep's unfinished runs as one SLURM job array.

Takes the local sweep's arguments (``propensity_evals.sweep``) and the CLUSTER_* variables from
the environment. The runs are planned exactly as the local sweep plans them; the ones still to
do (``sweep.runs_to_do``) that no earlier submission has queued or running go out as one array
with one task per run (see ``job``). Everything that can be checked is checked first, so a bad
setting is refused in one line and nothing is submitted.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from propensity_evals import sweep
from propensity_evals.catalog import UnknownTaskError
from propensity_evals.cluster import record, slurm_commands
from propensity_evals.cluster.job import JobRequest, run_one, submission_environment
from propensity_evals.cluster.settings import ClusterSettings, ClusterSettingsError


class SubmitError(RuntimeError):
    """The submission itself failed; the message is one line."""


def absolute(path: str) -> Path:
    """As the local sweep resolves OUTPUT_DIR: relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else sweep.REPO_ROOT / path


def active_runs(root: Path, output_dir: Path, queue: dict) -> dict[str, str]:
    """run name -> task id, for runs into ``output_dir`` that SLURM still holds."""
    active = {}
    for submission in record.all_submissions(root):
        if Path(submission.output_dir) != output_dir:
            continue
        for run in submission.runs:
            if run.task_id in queue:
                active[run.name] = run.task_id
    return active


def sbatch_refusal(error: Exception, stderr: str) -> str:
    """The first line sbatch said (submitit prints all of it, and wraps it again)."""
    for text in (stderr, str(error)):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("sbatch:"):
                return line
        if lines:
            return lines[0]
    return type(error).__name__


def submit(settings: ClusterSettings, root: Path, requests: list[JobRequest]) -> list:
    import submitit  # only here: the local sweep and the status target do not need it
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = submitit.SlurmExecutor(folder=root / record.LOGS_DIR)
    executor.update_parameters(**settings.submitit_parameters())
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return executor.map_array(run_one, requests)
    except (FailedJobError, FailedSubmissionError) as error:
        refusal = sbatch_refusal(error, captured.getvalue())
        raise SubmitError(f"sbatch refused the job: {refusal}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = sweep.parse_args(argv)
    try:
        settings = ClusterSettings.from_environ(os.environ)
        tasks = sweep.requested_tasks(args)
        runs = sweep.plan(args)
        slurm_commands.require_commands()
        slurm_commands.check_partition(settings.partition)
        root = record.cluster_dir()
        output_dir = absolute(args.output_dir)
        queue = slurm_commands.queue()
        active = active_runs(root, output_dir, queue)
    except (
        ClusterSettingsError,
        UnknownTaskError,
        sweep.SweepError,
        slurm_commands.SlurmError,
        record.RecordError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    group = args.wandb_group or sweep.default_group(args)
    todo = sweep.runs_to_do(runs, tasks, output_dir)
    print(f"sweep: {len(runs)} run(s) of `make {args.eval_target}` on SLURM, W&B group {group}")
    chosen = []
    for number, run in enumerate(runs, start=1):
        prefix = f"sweep [{number}/{len(runs)}] {run.name}"
        if run not in todo:
            print(f"{prefix}: complete, not submitted")
        elif run.name in active:
            print(f"{prefix}: already queued or running as {active[run.name]}, not submitted again")
        else:
            print(f"{prefix}: to submit")
            chosen.append(run)
    if not chosen:
        print("sweep: nothing to submit")
        return 0
    if args.dry_run:
        print(f"sweep: dry run, nothing submitted ({settings.describe()})")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    environment = submission_environment(args.system_prompt)
    requests = [
        JobRequest(args, run, tasks, output_dir, group, root / record.STAGING_DIR, environment)
        for run in chosen
    ]
    try:
        jobs = submit(settings, root, requests)
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    submission = record.Submission(
        job_id=jobs[0].job_id.split("_")[0],
        submitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        eval_target=args.eval_target,
        output_dir=str(output_dir),
        sweep_argv=list(argv),
        environment=environment,
        runs=[
            record.SubmittedRun(run.name, job.job_id, str(job.paths.stdout))
            for run, job in zip(chosen, jobs, strict=True)
        ],
    )
    submission.save(root)
    print_submitted(submission, settings, root)
    return 0


def print_submitted(submission: record.Submission, settings: ClusterSettings, root: Path) -> None:
    count = len(submission.runs)
    shape = f"an array of {count} task(s)" if count > 1 else "a single job"
    limit = (
        f", at most {settings.parallelism} at a time" if settings.parallelism and count > 1 else ""
    )
    print(f"submitted SLURM job {submission.job_id}: {shape}{limit} ({settings.describe()})")
    width = max(len(run.task_id) for run in submission.runs)
    for run in submission.runs:
        print(f"  {run.task_id:<{width}}  {run.name}  log: {run.log}")
    where = "" if root == record.cluster_dir({}) else f" CLUSTER_DIR={shlex.quote(str(root))}"
    print(f"follow it: make sweep_status{where}   (cancel: make sweep_cancel{where})")
    print(f"           tail -f {shlex.quote(submission.runs[0].log)}")


if __name__ == "__main__":
    sys.exit(main())
