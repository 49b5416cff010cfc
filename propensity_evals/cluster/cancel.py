"""``make sweep_cancel``: cancel what the last SLURM submission still has queued or running.

Runs already done stay; cancelled ones stay incomplete (their tasks publish nothing), so the
same ``make sweep EXECUTOR=slurm ...`` resubmits exactly them.
"""

from __future__ import annotations

import sys

from propensity_evals.cluster import record, slurm_commands


def main(argv: list[str] | None = None) -> int:
    try:
        submission = record.last_submission(record.cluster_dir())
        slurm_commands.require_commands()
        queue = slurm_commands.queue()
        active = [run for run in submission.runs if run.task_id in queue]
        if not active:
            print(f"SLURM job {submission.job_id}: nothing queued or running, nothing to cancel")
            return 0
        slurm_commands.cancel(submission.job_id)
    except (record.RecordError, slurm_commands.SlurmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = ", ".join(run.name for run in active)
    print(f"cancelled SLURM job {submission.job_id}: {len(active)} run(s) stopped ({names})")
    print("`make sweep_status` shows the rest; the same `make sweep EXECUTOR=slurm ...` resubmits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
