"""SLURM's own command-line tools, as far as the sweep needs them: sinfo, squeue, scancel.

submitit calls sbatch; everything else is asked here. No ``sacct``: many clusters run no
accounting database, and squeue plus the files a job leaves behind say all the sweep needs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

REQUIRED = ("sbatch", "srun", "squeue", "sinfo", "scancel")
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


class SlurmError(RuntimeError):
    """SLURM is missing or answered with an error; the message is one line."""


@dataclass(frozen=True)
class QueueEntry:
    task_id: str  # as squeue -r prints it: "123_4" for an array task, "123" for a plain job
    state: str  # squeue's long form: PENDING, RUNNING, COMPLETING, ...
    reason: str  # why it waits (Priority, Resources, JobArrayTaskLimit, BeginTime, ...)
    elapsed: str

    @property
    def queued(self) -> bool:
        return self.state in QUEUED


def require_commands() -> None:
    missing = [name for name in REQUIRED if shutil.which(name) is None]
    if missing:
        raise SlurmError(
            f"{missing[0]} not found on PATH: run `make sweep EXECUTOR=slurm` on a SLURM login "
            "node (after `module load slurm` where needed), or use EXECUTOR=local"
        )


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found on PATH: is this a SLURM login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer in 120 s: is slurmctld up?") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise SlurmError(f"{' '.join(command)} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def partitions() -> list[str]:
    # %R: the bare name (%P marks the default one with '*').
    return sorted({line.strip() for line in _run(["sinfo", "-h", "-o", "%R"]).splitlines()} - {""})


def check_partition(partition: str) -> None:
    if not partition:
        return
    names = partitions()
    if partition not in names:
        raise SlurmError(
            f"CLUSTER_PARTITION={partition}: no such partition on this cluster "
            f"(sinfo lists: {', '.join(names) or 'none'})"
        )


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def queue() -> dict[str, QueueEntry]:
    """This user's jobs that SLURM still holds (pending, running, completing), by task id.

    By user rather than by job id: ``squeue -j`` fails outright for an id it has forgotten.
    """
    output = _run(["squeue", "-h", "-r", "-u", current_user(), "-o", "%i|%T|%r|%M"])
    entries = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            entry = QueueEntry(*parts)
            entries[entry.task_id] = entry
    return entries


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])
